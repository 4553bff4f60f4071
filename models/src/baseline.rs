//! Classical baselines that evaluations run beside the networks, in the same
//! process on the same customers: the BG/NBD buy-till-you-die model (Fader,
//! Hardie & Lee, "Counting Your Customers the Easy Way", Marketing Science
//! 24(2), 2005) and logistic regression.
//!
//! Plain f64 code, no tch: the models are small and closed-form enough that
//! a maximum-likelihood fit over tens of thousands of customers takes well
//! under a second.

/// One customer's purchase history in BG/NBD's summary form, all times in
/// the same unit (days here): `x` repeat purchases (purchase days after the
/// first), the last one `t_x` after the first, observed for `t` since the
/// first (so `t_x <= t`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct History {
    /// Repeat purchases (purchase days after the first).
    pub x: u32,
    /// Time from the first purchase to the last.
    pub t_x: f64,
    /// Time from the first purchase to the end of observation.
    pub t: f64,
}

/// BG/NBD parameters: purchase rates λ ~ Gamma(shape r, rate α); after each
/// purchase a customer drops out with probability p ~ Beta(a, b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BgNbd {
    /// Shape of the purchase-rate gamma.
    pub r: f64,
    /// Rate (inverse scale, per time unit) of the purchase-rate gamma.
    pub alpha: f64,
    /// First shape of the drop-out beta.
    pub a: f64,
    /// Second shape of the drop-out beta.
    pub b: f64,
}

/// Why a baseline could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// Nothing to fit.
    #[error("no customers to fit")]
    Empty,
    /// A row (customer) that no model can explain.
    #[error("customer {index}: {reason}")]
    BadInput {
        /// The row.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The optimiser left the finite range.
    #[error("the fit did not converge to finite parameters")]
    NotFinite,
}

impl BgNbd {
    /// Maximum-likelihood fit (Nelder–Mead over the log parameters).
    pub fn fit(customers: &[History]) -> Result<BgNbd, FitError> {
        if customers.is_empty() {
            return Err(FitError::Empty);
        }
        for (index, c) in customers.iter().enumerate() {
            let ok = c.t_x.is_finite() && c.t.is_finite() && c.t_x >= 0.0 && c.t_x <= c.t;
            if !ok || (c.x > 0 && c.t_x <= 0.0) {
                return Err(FitError::BadInput {
                    index,
                    reason: format!(
                        "x {}, t_x {}, T {}: need 0 <= t_x <= T, and t_x > 0 when x > 0",
                        c.x, c.t_x, c.t
                    ),
                });
            }
        }
        let mean_t = customers.iter().map(|c| c.t).sum::<f64>() / customers.len() as f64;
        let start = [0.0, mean_t.max(1e-3).ln() - 2.0, 0.0, 0.0];
        let nll = |theta: &[f64; 4]| {
            let m = BgNbd::from_log(theta);
            let ll = m.log_likelihood(customers);
            if ll.is_finite() { -ll } else { f64::INFINITY }
        };
        let theta = nelder_mead(nll, start, 1.0, 4000, 1e-10);
        let m = BgNbd::from_log(&theta);
        if [m.r, m.alpha, m.a, m.b]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0)
        {
            Ok(m)
        } else {
            Err(FitError::NotFinite)
        }
    }

    fn from_log(theta: &[f64; 4]) -> BgNbd {
        BgNbd {
            r: theta[0].exp(),
            alpha: theta[1].exp(),
            a: theta[2].exp(),
            b: theta[3].exp(),
        }
    }

    /// Sum of the customers' log likelihoods (equation 6 of the paper). The
    /// gamma-function ratios are products over the integer `x`, so no log
    /// gamma is needed.
    pub fn log_likelihood(&self, customers: &[History]) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let max_x = customers.iter().map(|c| c.x).max().unwrap_or(0) as usize;
        // prefix[x] = ln Γ(r+x)/Γ(r) + ln B(a, b+x)/B(a, b)
        let mut prefix = Vec::with_capacity(max_x + 1);
        let mut acc = 0.0;
        prefix.push(acc);
        for j in 0..max_x {
            let j = j as f64;
            acc += (r + j).ln() + (b + j).ln() - (a + b + j).ln();
            prefix.push(acc);
        }
        let r_ln_alpha = r * alpha.ln();
        customers
            .iter()
            .map(|c| {
                let rx = r + f64::from(c.x);
                let a3 = -rx * (alpha + c.t).ln();
                let tail = if c.x > 0 {
                    let a4 = a.ln() - (b + f64::from(c.x) - 1.0).ln() - rx * (alpha + c.t_x).ln();
                    // ln(e^a3 + e^a4) without overflow
                    let m = a3.max(a4);
                    m + ((a3 - m).exp() + (a4 - m).exp()).ln()
                } else {
                    a3
                };
                prefix[c.x as usize] + r_ln_alpha + tail
            })
            .sum()
    }

    /// P(still active at the end of observation | history).
    pub fn p_alive(&self, c: &History) -> f64 {
        if c.x == 0 {
            return 1.0;
        }
        let rx = self.r + f64::from(c.x);
        let odds = self.a / (self.b + f64::from(c.x) - 1.0)
            * ((self.alpha + c.t) / (self.alpha + c.t_x)).powf(rx);
        1.0 / (1.0 + odds)
    }

    /// P(at least one purchase in the next `horizon` | history): alive, and
    /// the first purchase of a Gamma(r + x, α + T) rate comes within the
    /// horizon (dropping out only happens after a purchase).
    pub fn p_any_purchase(&self, c: &History, horizon: f64) -> f64 {
        let rx = self.r + f64::from(c.x);
        let none_if_alive = ((self.alpha + c.t) / (self.alpha + c.t + horizon)).powf(rx);
        self.p_alive(c) * (1.0 - none_if_alive)
    }

    /// Expected purchases in the next `horizon` | history (equation 10 of
    /// the paper).
    pub fn expected_purchases(&self, c: &History, horizon: f64) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let x = f64::from(c.x);
        let z = horizon / (alpha + c.t + horizon);
        let hyp = hyp2f1(r + x, b + x, a + b + x - 1.0, z);
        let base = ((alpha + c.t) / (alpha + c.t + horizon)).powf(r + x);
        let numerator = (a + b + x - 1.0) / (a - 1.0) * (1.0 - base * hyp);
        let denominator = if c.x > 0 {
            1.0 + a / (b + x - 1.0) * ((alpha + c.t) / (alpha + c.t_x)).powf(r + x)
        } else {
            1.0
        };
        numerator / denominator
    }
}

/// Gauss's hypergeometric function ₂F₁(a, b; c; z) by its power series, for
/// 0 <= z < 1 (where BG/NBD uses it).
fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    let (mut term, mut sum) = (1.0, 1.0);
    for k in 0..100_000 {
        let k = f64::from(k);
        term *= (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        sum += term;
        if term.abs() <= 1e-15 * sum.abs() {
            break;
        }
    }
    sum
}

/// Minimises `f` from `start` with the Nelder–Mead simplex (initial step
/// `step` along each axis) until the simplex's values differ by less than
/// `tolerance` or after `max_iterations`.
fn nelder_mead<const N: usize>(
    f: impl Fn(&[f64; N]) -> f64,
    start: [f64; N],
    step: f64,
    max_iterations: usize,
    tolerance: f64,
) -> [f64; N] {
    let mut simplex: Vec<([f64; N], f64)> = (0..=N)
        .map(|i| {
            let mut p = start;
            if i > 0 {
                p[i - 1] += step;
            }
            (p, f(&p))
        })
        .collect();
    let along = |from: &[f64; N], to: &[f64; N], t: f64| {
        let mut p = [0.0; N];
        for k in 0..N {
            p[k] = from[k] + t * (to[k] - from[k]);
        }
        p
    };
    for _ in 0..max_iterations {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        if (simplex[N].1 - simplex[0].1).abs() <= tolerance * (1.0 + simplex[0].1.abs()) {
            break;
        }
        let mut centroid = [0.0; N];
        for (p, _) in &simplex[..N] {
            for k in 0..N {
                centroid[k] += p[k] / N as f64;
            }
        }
        let worst = simplex[N];
        let reflected = along(&centroid, &worst.0, -1.0);
        let fr = f(&reflected);
        if fr < simplex[0].1 {
            let expanded = along(&centroid, &worst.0, -2.0);
            let fe = f(&expanded);
            simplex[N] = if fe < fr {
                (expanded, fe)
            } else {
                (reflected, fr)
            };
        } else if fr < simplex[N - 1].1 {
            simplex[N] = (reflected, fr);
        } else {
            let toward = if fr < worst.1 { reflected } else { worst.0 };
            let contracted = along(&centroid, &toward, 0.5);
            let fc = f(&contracted);
            if fc < worst.1.min(fr) {
                simplex[N] = (contracted, fc);
            } else {
                let best = simplex[0].0;
                for v in simplex.iter_mut().skip(1) {
                    let p = along(&best, &v.0, 0.5);
                    *v = (p, f(&p));
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    simplex[0].0
}

/// Logistic regression fitted by Newton's method (iteratively reweighted
/// least squares) with a small ridge penalty; inputs are standardised on
/// the training rows inside.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    mean: Vec<f64>,
    scale: Vec<f64>,
    /// Intercept first, then one weight per standardised input.
    pub weights: Vec<f64>,
}

impl Logistic {
    /// Fits `rows` (row-major, `width` inputs each) to `labels`.
    pub fn fit(rows: &[f64], width: usize, labels: &[bool], ridge: f64) -> Result<Self, FitError> {
        let n = labels.len();
        if n == 0 || width == 0 {
            return Err(FitError::Empty);
        }
        if rows.len() != n * width {
            return Err(FitError::BadInput {
                index: 0,
                reason: format!("{} values for {n} rows of {width}", rows.len()),
            });
        }
        if let Some(index) = rows.iter().position(|v| !v.is_finite()) {
            return Err(FitError::BadInput {
                index: index / width,
                reason: format!("input {} is not finite", index % width),
            });
        }
        let mut mean = vec![0.0; width];
        let mut scale = vec![0.0; width];
        for row in rows.chunks(width) {
            for k in 0..width {
                mean[k] += row[k] / n as f64;
            }
        }
        for row in rows.chunks(width) {
            for k in 0..width {
                scale[k] += (row[k] - mean[k]).powi(2) / n as f64;
            }
        }
        for s in &mut scale {
            *s = if *s > 0.0 { s.sqrt() } else { 1.0 };
        }
        let mut model = Logistic {
            mean,
            scale,
            weights: vec![0.0; width + 1],
        };
        let d = width + 1;
        let mut z = vec![0.0; d];
        for _ in 0..50 {
            let mut hessian = vec![0.0; d * d];
            let mut gradient = vec![0.0; d];
            for (row, &y) in rows.chunks(width).zip(labels) {
                model.design(row, &mut z);
                let p = sigmoid(dot(&model.weights, &z));
                let w = (p * (1.0 - p)).max(1e-12);
                let residual = f64::from(u8::from(y)) - p;
                for i in 0..d {
                    gradient[i] += residual * z[i];
                    for j in 0..d {
                        hessian[i * d + j] += w * z[i] * z[j];
                    }
                }
            }
            for i in 1..d {
                gradient[i] -= ridge * model.weights[i];
                hessian[i * d + i] += ridge;
            }
            let step = solve(hessian, gradient, d).ok_or(FitError::NotFinite)?;
            let mut largest: f64 = 0.0;
            for (w, s) in model.weights.iter_mut().zip(&step) {
                *w += s;
                largest = largest.max(s.abs());
            }
            if largest < 1e-9 {
                break;
            }
        }
        if model.weights.iter().all(|w| w.is_finite()) {
            Ok(model)
        } else {
            Err(FitError::NotFinite)
        }
    }

    /// P(label) for one row of inputs.
    pub fn predict(&self, row: &[f64]) -> f64 {
        let mut z = vec![0.0; self.weights.len()];
        self.design(row, &mut z);
        sigmoid(dot(&self.weights, &z))
    }

    fn design(&self, row: &[f64], z: &mut [f64]) {
        z[0] = 1.0;
        for k in 0..row.len() {
            z[k + 1] = (row[k] - self.mean[k]) / self.scale[k];
        }
    }
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Solves the d × d system `a x = b` (Gaussian elimination, partial pivoting).
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, d: usize) -> Option<Vec<f64>> {
    for col in 0..d {
        let pivot =
            (col..d).max_by(|&i, &j| a[i * d + col].abs().total_cmp(&a[j * d + col].abs()))?;
        if a[pivot * d + col].abs() < 1e-300 {
            return None;
        }
        if pivot != col {
            for k in 0..d {
                a.swap(col * d + k, pivot * d + k);
            }
            b.swap(col, pivot);
        }
        for row in col + 1..d {
            let factor = a[row * d + col] / a[col * d + col];
            for k in col..d {
                a[row * d + k] -= factor * a[col * d + k];
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = vec![0.0; d];
    for row in (0..d).rev() {
        let tail: f64 = (row + 1..d).map(|k| a[row * d + k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row * d + row];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (SplitMix64) with the draws the
    /// simulation needs.
    struct Draws(u64);

    impl Draws {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }

        /// Gamma(shape, 1) by Marsaglia & Tsang (boosted below shape 1).
        fn gamma(&mut self, shape: f64) -> f64 {
            if shape < 1.0 {
                return self.gamma(shape + 1.0) * self.uniform().powf(1.0 / shape);
            }
            let d = shape - 1.0 / 3.0;
            let c = 1.0 / (9.0 * d).sqrt();
            loop {
                let x = self.normal();
                let v = (1.0 + c * x).powi(3);
                if v > 0.0 && self.uniform().ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                    return d * v;
                }
            }
        }
    }

    /// Customers drawn from BG/NBD itself: each observed for `t`, buying at
    /// rate λ until they drop out; returns their histories and what they
    /// bought in the `horizon` after.
    fn simulate(m: &BgNbd, customers: usize, t: f64, horizon: f64) -> Vec<(History, u32)> {
        let mut draws = Draws(7);
        (0..customers)
            .map(|_| {
                let lambda = draws.gamma(m.r) / m.alpha;
                let (ga, gb) = (draws.gamma(m.a), draws.gamma(m.b));
                let p = ga / (ga + gb);
                let (mut now, mut x, mut t_x, mut future) = (0.0, 0, 0.0, 0);
                loop {
                    now += -draws.uniform().ln() / lambda;
                    if now > t + horizon {
                        break;
                    }
                    if now <= t {
                        x += 1;
                        t_x = now;
                    } else {
                        future += 1;
                    }
                    if draws.uniform() < p {
                        break;
                    }
                }
                (History { x, t_x, t }, future)
            })
            .collect()
    }

    #[test]
    fn bgnbd_recovers_the_parameters_it_was_drawn_from() {
        let truth = BgNbd {
            r: 0.25,
            alpha: 4.0,
            a: 0.8,
            b: 2.5,
        };
        let data = simulate(&truth, 20_000, 39.0, 39.0);
        let histories: Vec<History> = data.iter().map(|d| d.0).collect();
        let fitted = BgNbd::fit(&histories).unwrap();
        for (got, want, name) in [
            (fitted.r, truth.r, "r"),
            (fitted.alpha, truth.alpha, "alpha"),
            (fitted.a, truth.a, "a"),
            (fitted.b, truth.b, "b"),
        ] {
            assert!(
                (got - want).abs() / want < 0.2,
                "{name}: fitted {got}, drawn from {want}"
            );
        }
        assert!(fitted.log_likelihood(&histories) >= truth.log_likelihood(&histories));
        // Expected purchases add up to what the customers then bought, and
        // P(any purchase) ranks who bought well above chance (0.745 here).
        let expected: f64 = histories
            .iter()
            .map(|h| fitted.expected_purchases(h, 39.0))
            .sum();
        let actual: u32 = data.iter().map(|d| d.1).sum();
        assert!(
            (expected - f64::from(actual)).abs() / f64::from(actual) < 0.1,
            "expected {expected}, bought {actual}"
        );
        let p: Vec<f64> = histories
            .iter()
            .map(|h| fitted.p_any_purchase(h, 39.0))
            .collect();
        let bought: Vec<bool> = data.iter().map(|d| d.1 > 0).collect();
        let mean_p = p.iter().sum::<f64>() / p.len() as f64;
        let rate = bought.iter().filter(|b| **b).count() as f64 / bought.len() as f64;
        assert!((mean_p - rate).abs() < 0.02, "mean P {mean_p}, rate {rate}");
        let auc = crate::metrics::auc(&p, &bought);
        assert!(auc > 0.7, "AUC {auc}");
    }

    #[test]
    fn bgnbd_formulas_agree_with_their_limits() {
        let m = BgNbd {
            r: 0.24,
            alpha: 4.4,
            a: 0.79,
            b: 2.43,
        };
        let fresh = History {
            x: 0,
            t_x: 0.0,
            t: 30.0,
        };
        assert_eq!(m.p_alive(&fresh), 1.0);
        // A customer who bought often and long ago is probably gone.
        let lapsed = History {
            x: 10,
            t_x: 2.0,
            t: 38.0,
        };
        let steady = History {
            x: 10,
            t_x: 37.0,
            t: 38.0,
        };
        assert!(m.p_alive(&lapsed) < 0.1 && m.p_alive(&steady) > 0.8);
        assert!(m.expected_purchases(&steady, 39.0) > m.expected_purchases(&lapsed, 39.0));
        // Short horizons: E[X(t)] ≈ P(any purchase) ≈ P(alive) E[λ] t.
        let t = 1e-4;
        let rate = m.p_alive(&steady) * (m.r + 10.0) / (m.alpha + steady.t);
        let e = m.expected_purchases(&steady, t);
        assert!((e / (rate * t) - 1.0).abs() < 1e-3, "{e} vs {}", rate * t);
        assert!((m.p_any_purchase(&steady, t) / (rate * t) - 1.0).abs() < 1e-3);
        assert_eq!(hyp2f1(1.0, 1.0, 2.0, 0.0), 1.0);
        // 2F1(1, 1; 2; z) = -ln(1 - z) / z
        let z: f64 = 0.6;
        assert!((hyp2f1(1.0, 1.0, 2.0, z) + (1.0 - z).ln() / z).abs() < 1e-12);
    }

    #[test]
    fn bgnbd_rejects_impossible_histories() {
        assert_eq!(BgNbd::fit(&[]), Err(FitError::Empty));
        let bad = [History {
            x: 1,
            t_x: 5.0,
            t: 3.0,
        }];
        let err = BgNbd::fit(&bad).unwrap_err().to_string();
        assert!(
            err.contains("customer 0") && err.contains("t_x <= T"),
            "{err}"
        );
    }

    #[test]
    fn logistic_regression_recovers_a_known_model() {
        let mut draws = Draws(11);
        let (n, width) = (20_000, 2);
        let mut rows = Vec::with_capacity(n * width);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let (u, v) = (draws.normal(), draws.normal());
            rows.extend([u, v]);
            let p = sigmoid(0.5 + 2.0 * u - 1.0 * v);
            labels.push(draws.uniform() < p);
        }
        let model = Logistic::fit(&rows, width, &labels, 1e-6).unwrap();
        // Standardisation is near identity for N(0, 1) inputs.
        for (got, want) in model.weights.iter().zip([0.5, 2.0, -1.0]) {
            assert!((got - want).abs() < 0.1, "{:?}", model.weights);
        }
        assert!(model.predict(&[3.0, 0.0]) > 0.99 && model.predict(&[-3.0, 0.0]) < 0.01);
        let err = Logistic::fit(&[1.0, f64::NAN], 2, &[true], 0.0).unwrap_err();
        assert!(err.to_string().contains("not finite"), "{err}");
    }
}
