//! A card-transaction simulator after the Fraud Detection Handbook (Le Borgne, Siblini, Lebichot,
//! Bontempi: *Reproducible Machine Learning for Credit Card Fraud Detection – Practical Handbook*),
//! chapter 3, "Simulated dataset".
//!
//! - Customers and terminals are placed uniformly on a 100 × 100 grid. A customer uses the
//!   terminals within radius `r` (default 5) of its location.
//! - Customer profile: `mean_amount ~ U(5, 100)`, `std_amount = mean_amount / 2`,
//!   `mean_nb_tx_per_day ~ U(0, 4)`.
//! - Each day, a customer makes `Poisson(mean_nb_tx_per_day)` transactions; time of day
//!   `~ N(43200 s, 20000 s)`, a draw outside the day is dropped (as in the book); amount
//!   `~ N(mean_amount, std_amount)`, redrawn `U(0, 2 · mean_amount)` if negative, rounded to cents;
//!   terminal uniform among the customer's terminals (no transaction if it has none).
//! - Fraud scenarios, applied in this order:
//!   1. every transaction with amount > 220 is fraudulent;
//!   2. each day, 2 terminals are compromised for 28 days: all their transactions are fraudulent;
//!   3. each day, 3 customers are compromised for 14 days: a third of their transactions have
//!      their amount multiplied by 5 and are fraudulent.
//!
//! One deviation, so that days can be generated one at a time in bounded memory: scenario 3
//! marks each transaction of a compromised customer with probability 1/3 rather than sampling
//! exactly a third of them over the whole dataset. Everything is deterministic for a seed.
//!
//! ```
//! use weir_simulator::{SimConfig, Simulator};
//! let sim = Simulator::new(SimConfig { n_customers: 50, n_terminals: 100, n_days: 2, ..SimConfig::default() });
//! let txs: Vec<_> = sim.flatten().collect();
//! assert!(!txs.is_empty());
//! assert!(txs.windows(2).all(|w| w[0].tx.tx_time_ms <= w[1].tx.tx_time_ms));
//! ```
#![deny(missing_docs)]

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};
use serde::{Deserialize, Serialize};

/// 2018-04-01T00:00:00Z in milliseconds since the Unix epoch: the handbook's start date.
pub const HANDBOOK_START_MS: i64 = 1_522_540_800_000;
/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;

/// Simulator parameters. Defaults are the handbook's (5000 customers, 10000 terminals, r = 5,
/// start 2018-04-01), with 21 days (about 200,000 transactions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// Number of customers (cards).
    pub n_customers: usize,
    /// Number of terminals.
    pub n_terminals: usize,
    /// Number of simulated days.
    pub n_days: u32,
    /// Start of day 0, ms since the Unix epoch (UTC).
    pub start_ms: i64,
    /// Radius within which a customer uses terminals, in grid units (grid is 100 × 100).
    pub radius: f64,
    /// Random seed.
    pub seed: u64,
    /// Delay between a transaction and the arrival of its fraud label (a chargeback), in ms.
    pub label_delay_ms: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            n_customers: 5000,
            n_terminals: 10_000,
            n_days: 21,
            start_ms: HANDBOOK_START_MS,
            radius: 5.0,
            seed: 42,
            label_delay_ms: 7 * DAY_MS,
        }
    }
}

/// A customer profile (handbook, "Customer profiles generation").
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerProfile {
    /// Customer id (0-based, dense).
    pub id: u64,
    /// Location on the grid, `[0, 100)`.
    pub x: f64,
    /// Location on the grid, `[0, 100)`.
    pub y: f64,
    /// Mean transaction amount, currency units, `U(5, 100)`.
    pub mean_amount: f64,
    /// Standard deviation of amounts, `mean_amount / 2`.
    pub std_amount: f64,
    /// Mean number of transactions per day, `U(0, 4)`.
    pub mean_nb_tx_per_day: f64,
    /// Ids of the terminals within the radius.
    pub terminals: Vec<u64>,
}

/// A card transaction as the model sees it: the simulator's fields without the fraud label
/// (the label travels separately, on the `fraud-labels` topic, and arrives later). Its JSON is
/// the event schema `topologies/fraud-scoring.toml` declares.
///
/// Field names follow the Fraud Detection Handbook's simulated dataset (chapter 3), in snake case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transaction {
    /// Unique transaction id (monotone in transaction time within one generated dataset).
    pub tx_id: u64,
    /// Transaction time, milliseconds since the Unix epoch (UTC).
    pub tx_time_ms: i64,
    /// Customer (card) id.
    pub customer_id: u64,
    /// Terminal (merchant point of sale) id.
    pub terminal_id: u64,
    /// Amount in currency units (the handbook's dataset has no currency; two decimals).
    pub amount: f64,
}

/// The fraud label of one transaction, published on the `fraud-labels` topic after a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudLabel {
    /// Transaction id.
    pub tx_id: u64,
    /// Transaction time, ms since the Unix epoch.
    pub tx_time_ms: i64,
    /// The transaction's customer (card): a chargeback names the card.
    pub customer_id: u64,
    /// The transaction's terminal: a chargeback names the merchant's terminal.
    pub terminal_id: u64,
    /// 1 if fraudulent, else 0 (the handbook's `TX_FRAUD`).
    pub tx_fraud: u8,
    /// 0 if genuine, else the fraud scenario 1, 2 or 3 (`TX_FRAUD_SCENARIO`).
    pub tx_fraud_scenario: u8,
    /// When the label becomes known (`tx_time_ms + label_delay_ms`), ms since the Unix epoch.
    pub available_at_ms: i64,
}

/// A transaction and its label, as the simulator produces them.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledTransaction {
    /// What the model sees.
    pub tx: Transaction,
    /// What arrives later.
    pub label: FraudLabel,
}

/// Generates transactions day by day; an iterator over days (`Vec` of one day's transactions,
/// sorted by time, with consecutive `tx_id`s).
pub struct Simulator {
    config: SimConfig,
    customers: Vec<CustomerProfile>,
    rng: ChaCha8Rng,
    day: u32,
    next_tx_id: u64,
    /// (terminal id, last compromised day exclusive)
    compromised_terminals: Vec<(u64, u32)>,
    /// (customer id, last compromised day exclusive)
    compromised_customers: Vec<(u64, u32)>,
}

impl Simulator {
    /// Builds customer and terminal profiles for `config`.
    pub fn new(config: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut customers: Vec<CustomerProfile> = (0..config.n_customers as u64)
            .map(|id| {
                let x = rng.random_range(0.0..100.0);
                let y = rng.random_range(0.0..100.0);
                let mean_amount: f64 = rng.random_range(5.0..100.0);
                let mean_nb_tx_per_day = rng.random_range(0.0..4.0);
                CustomerProfile {
                    id,
                    x,
                    y,
                    mean_amount,
                    std_amount: mean_amount / 2.0,
                    mean_nb_tx_per_day,
                    terminals: Vec::new(),
                }
            })
            .collect();
        let terminals: Vec<(f64, f64)> = (0..config.n_terminals)
            .map(|_| (rng.random_range(0.0..100.0), rng.random_range(0.0..100.0)))
            .collect();
        let r2 = config.radius * config.radius;
        for c in &mut customers {
            c.terminals = terminals
                .iter()
                .enumerate()
                .filter(|(_, (x, y))| (x - c.x).powi(2) + (y - c.y).powi(2) < r2)
                .map(|(i, _)| i as u64)
                .collect();
        }
        Self {
            config,
            customers,
            rng,
            day: 0,
            next_tx_id: 0,
            compromised_terminals: Vec::new(),
            compromised_customers: Vec::new(),
        }
    }

    /// The customer profiles.
    pub fn customers(&self) -> &[CustomerProfile] {
        &self.customers
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    fn generate_day(&mut self, day: u32) -> Vec<LabeledTransaction> {
        let cfg = &self.config;
        let day_start = cfg.start_ms + day as i64 * DAY_MS;
        let time_dist = Normal::new(43_200.0, 20_000.0).expect("valid normal");
        let mut out: Vec<(i64, u64, u64, f64)> = Vec::new();
        for c in &self.customers {
            if c.mean_nb_tx_per_day <= 0.0 {
                continue;
            }
            let n = Poisson::new(c.mean_nb_tx_per_day)
                .expect("positive rate")
                .sample(&mut self.rng) as u64;
            let amount_dist = Normal::new(c.mean_amount, c.std_amount).expect("valid normal");
            for _ in 0..n {
                let t = time_dist.sample(&mut self.rng) as i64;
                if !(t > 0 && t < 86_400) {
                    continue;
                }
                let mut amount = amount_dist.sample(&mut self.rng);
                if amount < 0.0 {
                    amount = self.rng.random_range(0.0..2.0 * c.mean_amount);
                }
                let amount = (amount * 100.0).round() / 100.0;
                if c.terminals.is_empty() {
                    continue;
                }
                let terminal = c.terminals[self.rng.random_range(0..c.terminals.len())];
                out.push((day_start + t * 1000, c.id, terminal, amount));
            }
        }
        out.sort_by_key(|&(t, c, _, _)| (t, c));

        // Scenario 2 and 3 draws use their own seeded streams per day (the book seeds them with
        // the day index), so they do not depend on how many transactions were drawn.
        let mut scen_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ (0x5ce2_0000_0000 + day as u64));
        for t in sample(&mut scen_rng, cfg.n_terminals, 2.min(cfg.n_terminals)) {
            self.compromised_terminals.push((t as u64, day + 28));
        }
        for c in sample(&mut scen_rng, cfg.n_customers, 3.min(cfg.n_customers)) {
            self.compromised_customers.push((c as u64, day + 14));
        }
        self.compromised_terminals.retain(|&(_, until)| until > day);
        self.compromised_customers.retain(|&(_, until)| until > day);

        let mut fraud_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ (0xf3a0_0000_0000 + day as u64));
        let label_delay = cfg.label_delay_ms;
        out.into_iter()
            .map(|(tx_time_ms, customer_id, terminal_id, mut amount)| {
                let mut scenario = 0u8;
                if amount > 220.0 {
                    scenario = 1;
                }
                if self.compromised_terminals.iter().any(|&(t, _)| t == terminal_id) {
                    scenario = 2;
                }
                if self.compromised_customers.iter().any(|&(c, _)| c == customer_id) && fraud_rng.random_bool(1.0 / 3.0)
                {
                    amount = ((amount * 5.0) * 100.0).round() / 100.0;
                    scenario = 3;
                }
                let tx_id = self.next_tx_id;
                self.next_tx_id += 1;
                LabeledTransaction {
                    tx: Transaction {
                        tx_id,
                        tx_time_ms,
                        customer_id,
                        terminal_id,
                        amount,
                    },
                    label: FraudLabel {
                        tx_id,
                        tx_time_ms,
                        customer_id,
                        terminal_id,
                        tx_fraud: (scenario > 0) as u8,
                        tx_fraud_scenario: scenario,
                        available_at_ms: tx_time_ms + label_delay,
                    },
                }
            })
            .collect()
    }
}

impl Iterator for Simulator {
    type Item = Vec<LabeledTransaction>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.day >= self.config.n_days {
            return None;
        }
        let day = self.day;
        self.day += 1;
        Some(self.generate_day(day))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(days: u32, seed: u64) -> SimConfig {
        SimConfig {
            n_customers: 500,
            n_terminals: 1000,
            n_days: days,
            seed,
            ..SimConfig::default()
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let a: Vec<_> = Simulator::new(small(5, 7)).flatten().collect();
        let b: Vec<_> = Simulator::new(small(5, 7)).flatten().collect();
        let c: Vec<_> = Simulator::new(small(5, 8)).flatten().collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn follows_the_handbook_rules() {
        let sim = Simulator::new(small(40, 1));
        let customers = sim.customers().to_vec();
        for c in &customers {
            assert!((5.0..100.0).contains(&c.mean_amount));
            assert!((0.0..4.0).contains(&c.mean_nb_tx_per_day));
        }
        let txs: Vec<_> = sim.flatten().collect();
        // Mean daily count ~ n_customers * E[U(0,4)] = 2 per customer, minus the dropped times.
        let per_day = txs.len() as f64 / 40.0;
        assert!((850.0..1000.0).contains(&per_day), "{per_day} tx/day");
        let mut frauds = [0usize; 4];
        for (i, t) in txs.iter().enumerate() {
            assert_eq!(t.tx.tx_id, i as u64, "ids are dense and in time order");
            let day = (t.tx.tx_time_ms - HANDBOOK_START_MS) / DAY_MS;
            assert!((0..40).contains(&day));
            let c = &customers[t.tx.customer_id as usize];
            assert!(c.terminals.contains(&t.tx.terminal_id), "terminal within radius");
            assert!(t.tx.amount >= 0.0);
            assert_eq!((t.tx.amount * 100.0).round() / 100.0, t.tx.amount, "cents");
            if t.label.tx_fraud_scenario == 0 {
                assert!(t.tx.amount <= 220.0, "amounts > 220 are always fraud");
            }
            assert_eq!(t.label.tx_fraud, (t.label.tx_fraud_scenario > 0) as u8);
            assert_eq!(t.label.available_at_ms, t.tx.tx_time_ms + 7 * DAY_MS);
            frauds[t.label.tx_fraud_scenario as usize] += 1;
        }
        let rate = (txs.len() - frauds[0]) as f64 / txs.len() as f64;
        assert!(frauds[1] > 0 && frauds[2] > 0 && frauds[3] > 0, "{frauds:?}");
        // With 500 customers and 1000 terminals the compromised share is larger than the book's
        // (<1% at 5000/10000); it must still be a minority class.
        assert!(rate > 0.001 && rate < 0.2, "fraud rate {rate}");
    }
}
