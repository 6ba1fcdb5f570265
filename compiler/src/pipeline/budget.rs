//! What the measuring phases may spend: runtime evaluations within `--search-budget`, and the float
//! trajectories their probes and the final measurement are drawn from; and calibration's
//! forward-process probes.
use crate::options::CompileOptions;
use crate::protect;

/// Measurement scales with the model: each phase (sensitivity ranking, quality floor, final SQNR)
/// gets `--search-budget` multiply-accumulates of runtime evaluations (60 G by default: seconds on
/// a desktop core), at least 40 evaluations; the searches count what they spend.
pub(crate) struct Budget {
    pub max_evals: usize,
    pub eval_samples: usize,
    /// float trajectories the searches draw their probes from (the ranking's, the floor's): two,
    /// or one when the budget cannot run two through every step (an SD-sized model over 50 steps:
    /// one trajectory is 50 float evaluations, the whole budget 40 runtime ones)
    pub probe_trajectories: usize,
    pub ranking: protect::Evals,
    pub floor: protect::Evals,
    /// the 16-bit weights' ranking ([`crate::split_weights::auto`])
    pub weights: protect::Evals,
}

impl Budget {
    pub fn for_model(macs: u64, opts: &CompileOptions) -> Budget {
        let max_evals = ((opts.search_budget_g * 1e9 / macs as f64) as usize).max(40);
        let per_trajectory = (2 * opts.steps as usize).max(1);
        let probe_trajectories = if max_evals >= per_trajectory { 2 } else { 1 };
        let eval_samples = opts
            .eval_samples
            .min((max_evals / per_trajectory).max(probe_trajectories));
        Budget {
            max_evals,
            eval_samples,
            probe_trajectories,
            ranking: protect::Evals::new(max_evals),
            floor: protect::Evals::new(max_evals),
            weights: protect::Evals::new(max_evals),
        }
    }

    /// `opts` with the measurement's trajectories within the budget.
    pub fn options(&self, opts: &CompileOptions) -> CompileOptions {
        CompileOptions {
            eval_samples: self.eval_samples,
            ..opts.clone()
        }
    }

    /// (phase, runtime evaluations made, budget, what it measured when capped) of the searches.
    pub fn spent(&self) -> Vec<(String, usize, usize, Option<String>)> {
        let e = |name: &str, e: &protect::Evals| {
            (name.to_string(), e.used(), self.max_evals, e.capped())
        };
        vec![
            e("sensitivity ranking", &self.ranking),
            e("quality floor", &self.floor),
            e("16-bit weights", &self.weights),
        ]
    }
}

/// Forward-process probes per probed step for `trajectories` calibration trajectories: a quarter as
/// many, at least 2; only 1 when `--calib-budget` capped the trajectories, since the probes are
/// float evaluations of the same budget (an SD-sized UNet at 50 steps, whose one trajectory fills
/// it: 44 drifted steps' probes took 88 evaluations of 8 s, 1.8 times the trajectory itself).
pub(crate) fn probes_per_step(trajectories: usize, capped: bool) -> usize {
    if capped {
        1
    } else {
        (trajectories / 4).max(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(steps: u32) -> CompileOptions {
        CompileOptions {
            steps,
            eval_samples: 8,
            ..CompileOptions::default()
        }
    }

    #[test]
    fn a_capped_calibration_takes_one_probe_per_step() {
        assert_eq!(probes_per_step(16, false), 4);
        assert_eq!(probes_per_step(4, false), 2);
        assert_eq!(probes_per_step(1, false), 2);
        assert_eq!(probes_per_step(1, true), 1);
        assert_eq!(probes_per_step(3, true), 1);
    }

    #[test]
    fn probes_come_from_one_trajectory_only_when_two_exceed_the_budget() {
        // 60 G MACs by default: a 33 M-MAC model runs 1818 evaluations, two 50-step trajectories
        // fit and the measurement takes as many as it asks for
        let small = Budget::for_model(33_000_000, &opts(50));
        assert_eq!(
            (
                small.max_evals,
                small.probe_trajectories,
                small.eval_samples
            ),
            (1818, 2, 8)
        );
        // a 9.8 G-MAC model: the 40-evaluation minimum; 2 × 5 steps fit four times, 2 × 50 not
        let mid = Budget::for_model(9_800_000_000, &opts(5));
        assert_eq!(
            (mid.max_evals, mid.probe_trajectories, mid.eval_samples),
            (40, 2, 4)
        );
        let mid50 = Budget::for_model(9_800_000_000, &opts(50));
        assert_eq!((mid50.probe_trajectories, mid50.eval_samples), (1, 1));
        // an SD-sized UNet (402 G MACs) over 50 steps: one trajectory for the probes and the
        // measurement (each costs 50 float evaluations and 50 runtime ones; the budget is 40)
        let sd = Budget::for_model(401_600_000_000, &opts(50));
        assert_eq!(
            (sd.max_evals, sd.probe_trajectories, sd.eval_samples),
            (40, 1, 1)
        );
        // never more than asked for
        let one = Budget::for_model(
            33_000_000,
            &CompileOptions {
                eval_samples: 1,
                ..opts(50)
            },
        );
        assert_eq!((one.probe_trajectories, one.eval_samples), (2, 1));
    }
}
