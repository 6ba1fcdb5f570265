//! Timestep buckets: every scheduled step lands in exactly one bucket, bounds separate neighbours, and
//! the runtime picks the bucket of any timestep, scheduled or not.
mod common;
use dmq_compiler::calib::buckets;
use dmq_runtime::Model;

#[test]
fn buckets_partition_the_schedule_with_midpoint_bounds() {
    let ts: Vec<f32> = (0..50).map(|i| (981 - 20 * i) as f32).collect();
    for g in [1usize, 3, 7, 50, 80] {
        let b = buckets(&ts, g);
        assert_eq!(b.len(), g.min(50));
        let mut seen = vec![0; 50];
        for (k, (steps, upper)) in b.iter().enumerate() {
            assert!(!steps.is_empty());
            for &s in steps {
                seen[s] += 1;
            }
            match upper {
                Some(u) => {
                    let top = steps.iter().map(|&s| ts[s]).fold(f32::MIN, f32::max);
                    let next = b[k + 1].0.iter().map(|&s| ts[s]).fold(f32::MAX, f32::min);
                    assert!(top < *u && *u < next, "bound {u} between {top} and {next}");
                }
                None => assert_eq!(k, b.len() - 1),
            }
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "each step in exactly one bucket"
        );
    }
}

#[test]
fn runtime_picks_the_bucket_of_any_timestep() {
    let model = Model::load(common::tiny_dmq()).unwrap();
    let streams = model.streams();
    assert!(streams >= 1);
    let bounds = model.meta().bucket_upper.clone();
    assert_eq!(bounds.len(), streams - 1);
    for (i, &u) in bounds.iter().enumerate() {
        assert_eq!(model.stream_for(u), i);
        assert_eq!(model.stream_for(u + 0.5), i + 1);
    }
    assert_eq!(model.stream_for(-5.0), 0);
    assert_eq!(model.stream_for(1e9), streams - 1);
}
