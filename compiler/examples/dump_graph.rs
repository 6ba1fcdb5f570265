//! Prints the decluttered tract graph dmqc lowers (ops, inputs, shapes): `cargo run --example dump_graph -- MODEL.onnx`.
fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .expect("usage: dump_graph MODEL.onnx");
    let imp = dmq_compiler::import::import(std::path::Path::new(&path), None, &[])?;
    for n in imp.model.nodes() {
        let ins: Vec<String> = n
            .inputs
            .iter()
            .map(|o| format!("{}/{}", o.node, o.slot))
            .collect();
        println!(
            "#{} {} [{}] <- {:?} : {:?}",
            n.id,
            n.name,
            n.op.name(),
            ins,
            n.outputs.first().map(|o| &o.fact)
        );
    }
    Ok(())
}
