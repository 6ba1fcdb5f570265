//! Never below the baseline: the steps at which the compiled file measures worse than the plain
//! one-range min-max baseline (on the same inputs) get streams of their own that run the baseline's
//! program and ranges, so that at those steps the device computes exactly what the baseline does.
use super::build::{Bucket, Kind};
use crate::calib;
use crate::quant::Range;
use std::collections::HashMap;

/// The buckets with every step marked in `worse` moved to a baseline bucket, in ascending t: each
/// bucket splits into runs of neighbouring steps, the runs of worse steps (from any bucket) that
/// neighbour each other form one baseline bucket. With more than `max_streams` buckets, the
/// shortest run of better steps between baseline buckets joins them (at those steps the baseline
/// is measured no better, so nothing goes below it) until the file has at most `max_streams`.
pub(crate) fn split(
    buckets: &[Bucket],
    worse: &[bool],
    timesteps: &[f32],
    baseline: &HashMap<usize, Range>,
    max_streams: usize,
) -> Vec<Bucket> {
    let mut owner = vec![usize::MAX; timesteps.len()];
    for (k, b) in buckets.iter().enumerate() {
        b.steps.iter().for_each(|&s| owner[s] = k);
    }
    let mut order: Vec<usize> = (0..timesteps.len()).collect();
    order.sort_by(|&x, &y| timesteps[x].total_cmp(&timesteps[y]));
    let mut worse = worse.to_vec();
    let runs = loop {
        // a run's key: None for baseline steps, else the bucket it stays in
        let key = |s: usize| (!worse[s]).then_some(owner[s]);
        let runs: Vec<Vec<usize>> = order
            .chunk_by(|&x, &y| key(x) == key(y))
            .map(|r| r.to_vec())
            .collect();
        let shortest = (0..runs.len())
            .filter(|&i| !worse[runs[i][0]])
            .filter(|&i| {
                (i > 0 && worse[runs[i - 1][0]]) || runs.get(i + 1).is_some_and(|r| worse[r[0]])
            })
            .min_by_key(|&i| runs[i].len());
        match shortest {
            Some(i) if runs.len() > max_streams.max(1) => {
                runs[i].iter().for_each(|&s| worse[s] = true)
            }
            _ => break runs,
        }
    };
    let bounded = calib::with_bounds(runs.into_iter().map(|r| (r, None)).collect(), timesteps);
    bounded
        .into_iter()
        .map(|(steps, upper)| match worse[steps[0]] {
            true => Bucket {
                upper,
                ranges: baseline.clone(),
                steps,
                kind: Kind::Baseline,
            },
            false => {
                let own = &buckets[owner[steps[0]]];
                Bucket {
                    upper,
                    steps,
                    ..own.clone()
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(steps: &[usize], kind: Kind, marker: f32) -> Bucket {
        let mut ranges = HashMap::new();
        ranges.insert(0, Range::new(-marker, marker));
        Bucket {
            upper: None,
            ranges,
            steps: steps.to_vec(),
            kind,
        }
    }

    // steps are listed in sampling order (t descending), as the calibration records them
    fn timesteps() -> Vec<f32> {
        vec![900.0, 700.0, 500.0, 300.0, 100.0, 50.0]
    }

    #[test]
    fn worse_steps_run_the_baseline_and_the_rest_keep_their_bucket() {
        let ts = timesteps();
        // bucket A: t = 50, 100, 300 (steps 5, 4, 3); bucket B (floor): t = 500, 700, 900
        let bs = vec![
            bucket(&[5, 4, 3], Kind::Main, 1.0),
            bucket(&[2, 1, 0], Kind::Floor, 2.0),
        ];
        let base = bucket(&[], Kind::Baseline, 9.0).ranges;
        // worse at t = 100 (step 4) and t = 500, 700 (steps 2, 1)
        let worse = [false, true, true, false, true, false];
        let out = split(&bs, &worse, &ts, &base, 64);
        let got: Vec<(Vec<usize>, Kind, f32, Option<f32>)> = out
            .iter()
            .map(|b| (b.steps.clone(), b.kind, b.ranges[&0].max, b.upper))
            .collect();
        assert_eq!(
            got,
            vec![
                (vec![5], Kind::Main, 1.0, Some(75.0)),
                (vec![4], Kind::Baseline, 9.0, Some(200.0)),
                (vec![3], Kind::Main, 1.0, Some(400.0)),
                (vec![2, 1], Kind::Baseline, 9.0, Some(800.0)),
                (vec![0], Kind::Floor, 2.0, None),
            ]
        );
        // every step is served, once
        let mut all: Vec<usize> = out.iter().flat_map(|b| b.steps.clone()).collect();
        all.sort();
        assert_eq!(all, (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn too_many_streams_give_the_shortest_better_runs_to_the_baseline() {
        let ts = timesteps();
        let bs = vec![bucket(&[0, 1, 2, 3, 4, 5], Kind::Main, 1.0)];
        let base = bucket(&[], Kind::Baseline, 9.0).ranges;
        // ascending t: steps 5 4 3 2 1 0 marked   . W . . W .  -> five runs
        let worse = [false, true, false, false, true, false];
        let out = split(&bs, &worse, &ts, &base, 3);
        let got: Vec<(Vec<usize>, Kind)> = out.iter().map(|b| (b.steps.clone(), b.kind)).collect();
        // the single-step better runs at either end go first; the two-step run in the middle stays
        assert_eq!(
            got,
            vec![
                (vec![5, 4], Kind::Baseline),
                (vec![3, 2], Kind::Main),
                (vec![1, 0], Kind::Baseline),
            ]
        );
        // no step marked worse ever leaves the baseline
        for (s, &w) in worse.iter().enumerate() {
            if w {
                assert!(out
                    .iter()
                    .any(|b| b.kind == Kind::Baseline && b.steps.contains(&s)));
            }
        }
    }

    #[test]
    fn nothing_worse_changes_nothing() {
        let ts = timesteps();
        let bs = vec![
            bucket(&[5, 4, 3], Kind::Main, 1.0),
            bucket(&[2, 1, 0], Kind::Main, 2.0),
        ];
        let base = bucket(&[], Kind::Baseline, 9.0).ranges;
        let out = split(&bs, &[false; 6], &ts, &base, 64);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].steps, vec![5, 4, 3]);
        assert_eq!(out[1].ranges[&0].max, 2.0);
        assert_eq!(out[0].upper, Some(400.0));
    }
}
