//! Realistic, deterministic sample clickstream in the canonical format, with a manifest of what
//! was generated (`_manifest.json`) so tests can check clicklake against the generator's own
//! bookkeeping rather than against clicklake itself.
//!
//! Shoppers browse in sessions (landing page, searches, product views) and some go down the
//! funnel: add to cart → cart view → checkout steps 1–3 → payment → purchase, with drop-off at
//! every stage. Registered shoppers log in from the start, midway, or never; popular products are
//! viewed more; some shoppers buy again. `--dirty` adds one line of every quarantine kind in turn,
//! blank lines, exact and conflicting resends in later files, late events, and messy-but-valid
//! formatting (case and spaces in event_type, `+02:00` offsets, empty strings).
//!
//! Files are streamed: memory does not grow with the number of events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cli::{Compression, GenerateFormat};
use crate::error::{Error, Result};
use crate::ingest::reason::Reason;

pub struct Options {
    pub events: u64,
    pub seed: u64,
    pub out: PathBuf,
    pub files: u32,
    pub dirty: bool,
    pub start: chrono::NaiveDate,
    pub days: u32,
    pub format: GenerateFormat,
    pub compress: Option<Compression>,
}

/// Bumped whenever the same seed and options would write different files. 2: sessions spread
/// over every requested day (version 1 assumed 6 events a session and ended early). 3: dirt
/// includes `stale_event_time` (a clock reset to 1970).
pub const GENERATOR_VERSION: u32 = 3;

/// What the generator knows it wrote.
#[derive(Debug, Serialize, Default, Clone, serde::Deserialize)]
pub struct Manifest {
    /// Which version of the generator wrote the files: the same seed and options give the same
    /// bytes only within one version (cached benchmark data is regenerated when it changes).
    #[serde(default)]
    pub generator_version: u32,
    pub seed: u64,
    pub events: u64,
    pub files: Vec<String>,
    pub dirty: bool,
    /// Every line written, blank ones included (CSV: data records, header excluded).
    pub lines_total: u64,
    pub blank_lines: u64,
    /// Lines that pass validation (unique events + exact and conflicting resends).
    pub valid_lines: u64,
    pub quarantine_by_reason: BTreeMap<String, u64>,
    pub quarantined: u64,
    pub unique_events: u64,
    pub exact_duplicates: u64,
    pub conflicting_duplicates: u64,
    pub late_events: u64,
    pub sessions: u64,
    pub sessions_with_client_id: u64,
    pub sessions_without_client_id: u64,
    pub sessions_with_add_to_cart: u64,
    pub sessions_reaching_checkout: u64,
    pub sessions_with_payment_info: u64,
    pub sessions_with_purchase: u64,
    pub orders: u64,
    /// Order revenue per currency, in cents.
    pub revenue_cents_by_currency: BTreeMap<String, i64>,
    pub registered_users: u64,
    pub anonymous_ids: u64,
    /// Customers (one per visitor) with two or more orders.
    pub repeat_buyers: u64,
    /// Unique valid events per UTC date of event_time.
    pub events_per_day: BTreeMap<String, u64>,
    pub input_bytes: u64,
}

const CATEGORIES: &[&str] = &[
    "electronics/audio/headphones",
    "electronics/audio/speakers",
    "electronics/phones/smartphones",
    "electronics/computers/laptops",
    "home/kitchen/coffee",
    "home/furniture/chairs",
    "fashion/shoes/sneakers",
    "fashion/apparel/jackets",
    "sports/outdoor/tents",
    "beauty/skincare/creams",
    "toys/games/puzzles",
    "books/fiction/thrillers",
];
const BRANDS: &[&str] = &[
    "acme",
    "northwind",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "vandelay",
    "stark",
    "",
    "wayne",
];
const COUNTRIES: &[(&str, &str)] = &[
    ("DE", "EUR"),
    ("FR", "EUR"),
    ("NL", "EUR"),
    ("GB", "GBP"),
    ("US", "USD"),
    ("US", "USD"),
];
const DEVICES: &[&str] = &["desktop", "mobile", "mobile", "tablet"];
const REFERRERS: &[&str] = &[
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://newsletter.example.com/weekly",
    "https://www.instagram.com/",
];
const SEARCHES: &[&str] = &[
    "headphones",
    "running shoes",
    "coffee grinder",
    "tent",
    "gift ideas",
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
];

struct Product {
    id: String,
    category: &'static str,
    brand: &'static str,
    price_cents: i64,
}

struct Visitor {
    anon: String,
    user: Option<u64>,
    country: usize,
    device: &'static str,
    agent: &'static str,
    ip: String,
    last_end_us: i64,
}

/// One event as generated.
#[derive(Clone)]
struct Ev {
    event_id: String,
    event_time_us: i64,
    received_us: i64,
    event_type: &'static str,
    user: Option<u64>,
    anon: String,
    session_id: Option<String>,
    product: Option<usize>,
    price_cents: Option<i64>,
    quantity: Option<i64>,
    currency: &'static str,
    order_id: Option<String>,
    revenue_cents: Option<i64>,
    checkout_step: Option<i64>,
    page_url: String,
    referrer: Option<&'static str>,
    device: &'static str,
    country: &'static str,
    ip: String,
    agent: &'static str,
    query: Option<&'static str>,
}

struct Sink {
    w: Box<dyn Write>,
    bytes: u64,
}

struct Gen {
    rng: StdRng,
    opts: Options,
    products: Vec<Product>,
    visitors: Vec<Visitor>,
    sinks: Vec<Sink>,
    m: Manifest,
    id_counter: u64,
    order_counter: u64,
    dirt_counter: u64,
    users_seen: HashSet<u64>,
    anons_seen: HashSet<String>,
    /// Orders per customer (anonymous_id: one visitor is one customer).
    buyers: HashMap<String, u32>,
}

pub fn generate(opts: Options) -> Result<Manifest> {
    if opts.files == 0 {
        return Err(Error::usage("--files must be at least 1"));
    }
    if opts.days == 0 {
        return Err(Error::usage("--days must be at least 1"));
    }
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| Error::usage(format!("cannot create {}: {e}", opts.out.display())))?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let n_products = (opts.events / 40).clamp(40, 5000) as usize;
    let products = (0..n_products)
        .map(|i| Product {
            id: format!("p{:05}", i + 1),
            category: CATEGORIES[rng.gen_range(0..CATEGORIES.len())],
            brand: BRANDS[rng.gen_range(0..BRANDS.len())],
            price_cents: (rng.gen_range(3.0f64..7.6).exp() * 100.0).round() as i64 / 5 * 5 + 99,
        })
        .collect();
    let n_visitors = (opts.events / 12).max(8);
    let visitors = (0..n_visitors)
        .map(|i| Visitor {
            anon: format!("a-{:016x}", rng.gen::<u64>()),
            user: (rng.gen_bool(0.45)).then_some(i + 1),
            country: rng.gen_range(0..COUNTRIES.len()),
            device: DEVICES[rng.gen_range(0..DEVICES.len())],
            agent: AGENTS[rng.gen_range(0..AGENTS.len())],
            ip: format!(
                "{}.{}.{}.{}",
                rng.gen_range(11..223),
                rng.gen_range(0..255),
                rng.gen_range(0..255),
                rng.gen_range(1..255)
            ),
            last_end_us: i64::MIN / 2,
        })
        .collect();
    let ext = match opts.format {
        GenerateFormat::Ndjson => "ndjson",
        GenerateFormat::Csv => "csv",
    };
    let cext = match opts.compress {
        None => "",
        Some(Compression::Gzip) => ".gz",
        Some(Compression::Zstd) => ".zst",
    };
    let mut sinks = Vec::new();
    let mut names = Vec::new();
    for i in 0..opts.files {
        let name = format!("events-{:04}.{ext}{cext}", i + 1);
        let path = opts.out.join(&name);
        let f = std::fs::File::create(&path)
            .map_err(|e| Error::usage(format!("cannot create {}: {e}", path.display())))?;
        let f = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut w: Box<dyn Write> = match opts.compress {
            None => Box::new(f),
            Some(Compression::Gzip) => Box::new(flate2::write::GzEncoder::new(
                f,
                flate2::Compression::fast(),
            )),
            Some(Compression::Zstd) => {
                Box::new(zstd::stream::write::Encoder::new(f, 1)?.auto_finish())
            }
        };
        if opts.format == GenerateFormat::Csv {
            writeln!(w, "{}", csv_header())?;
        }
        sinks.push(Sink { w, bytes: 0 });
        names.push(name);
    }
    let mut g = Gen {
        rng,
        m: Manifest {
            generator_version: GENERATOR_VERSION,
            seed: opts.seed,
            events: opts.events,
            files: names,
            dirty: opts.dirty,
            ..Default::default()
        },
        opts,
        products,
        visitors,
        sinks,
        id_counter: 0,
        order_counter: 0,
        dirt_counter: 0,
        users_seen: HashSet::new(),
        anons_seen: HashSet::new(),
        buyers: HashMap::new(),
    };
    g.run()?;
    let Gen {
        mut m,
        sinks,
        opts,
        users_seen,
        anons_seen,
        buyers,
        ..
    } = g;
    for s in sinks {
        let mut w = s.w;
        w.flush()?;
    }
    m.registered_users = users_seen.len() as u64;
    m.anonymous_ids = anons_seen.len() as u64;
    m.repeat_buyers = buyers.values().filter(|n| **n >= 2).count() as u64;
    m.quarantined = m.quarantine_by_reason.values().sum();
    m.input_bytes = m
        .files
        .iter()
        .map(|f| {
            std::fs::metadata(opts.out.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum();
    let manifest = serde_json::to_string_pretty(&m).expect("manifest serializes");
    std::fs::write(opts.out.join("_manifest.json"), manifest)?;
    Ok(m)
}

fn csv_header() -> &'static str {
    "event_id,event_time,received_at,event_type,user_id,anonymous_id,session_id,product_id,category,brand,price,quantity,currency,order_id,revenue,checkout_step,page_url,referrer,device,country,email,ip,user_agent"
}

const MIN_US: i64 = 60_000_000;

impl Gen {
    fn next_id(&mut self) -> String {
        self.id_counter += 1;
        let r: u64 = self.rng.gen();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            (r >> 32) as u32,
            (r >> 16) as u16,
            self.id_counter & 0xfff,
            (r as u16) | 0x8000,
            self.id_counter
        )
    }

    fn run(&mut self) -> Result<()> {
        let start_us = self
            .opts
            .start
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_micros();
        let range_us = self.opts.days as i64 * 86_400_000_000;
        let end_us = (start_us + range_us) as f64;
        let mut t = start_us as f64;
        let mut emitted = 0u64;
        let mut session_no = 0u64;
        // Sessions arrive as a Poisson process whose rate spreads the events still to make over
        // the time still left (by the mean session length so far), so the data spans all `days`.
        let mut events_per_session = 8.0;
        while emitted < self.opts.events {
            let sessions_left = ((self.opts.events - emitted) as f64 / events_per_session).max(1.0);
            let mean_gap = (end_us - t).max(1.0) / sessions_left;
            t += -mean_gap * (1.0 - self.rng.gen::<f64>()).ln();
            let session_start = t as i64;
            let file = ((((session_start - start_us).max(0) as f64) / range_us as f64)
                * self.opts.files as f64) as usize;
            let file = file.min(self.opts.files as usize - 1);
            let Some(v) = self.pick_visitor(session_start) else {
                continue;
            };
            session_no += 1;
            let evs = self.session(v, session_start, session_no, self.opts.events - emitted);
            if evs.is_empty() {
                continue;
            }
            let end = evs.last().map(|e| e.event_time_us).unwrap_or(session_start);
            self.visitors[v].last_end_us = end;
            emitted += evs.len() as u64;
            events_per_session = emitted as f64 / session_no as f64;
            self.account_session(&evs);
            for ev in evs {
                self.emit(ev, file)?;
            }
            if self.opts.dirty && self.rng.gen_bool(0.09) {
                self.dirt(session_start, file)?;
            }
        }
        Ok(())
    }

    /// A visitor free for a new session at `at` (no session within 31 minutes before).
    fn pick_visitor(&mut self, at: i64) -> Option<usize> {
        let n = self.visitors.len();
        for _ in 0..12 {
            // Skewed: low indexes come back more often (repeat visitors).
            let r: f64 = self.rng.gen();
            let i = ((r * r) * n as f64) as usize % n;
            if at - self.visitors[i].last_end_us > 31 * MIN_US {
                return Some(i);
            }
        }
        None
    }

    fn session(&mut self, v: usize, start: i64, session_no: u64, budget: u64) -> Vec<Ev> {
        let with_client_id = self.rng.gen_bool(0.8);
        let session_id =
            with_client_id.then(|| format!("s-{session_no:08}-{:04x}", self.rng.gen::<u16>()));
        let visitor = &self.visitors[v];
        let login_mode = match visitor.user {
            None => 0,
            Some(_) => match self.rng.gen_range(0..10) {
                0..=4 => 1, // logged in throughout
                5..=6 => 2, // logs in midway
                _ => 0,     // browses anonymously
            },
        };
        let (country, currency) = COUNTRIES[visitor.country];
        let base = Ev {
            event_id: String::new(),
            event_time_us: start,
            received_us: 0,
            event_type: "page_view",
            user: None,
            anon: visitor.anon.clone(),
            session_id,
            product: None,
            price_cents: None,
            quantity: None,
            currency,
            order_id: None,
            revenue_cents: None,
            checkout_step: None,
            page_url: String::new(),
            referrer: None,
            device: visitor.device,
            country,
            ip: visitor.ip.clone(),
            agent: visitor.agent,
            query: None,
        };
        let user = visitor.user;
        let mut evs: Vec<Ev> = Vec::new();
        let mut now = start;
        let mut push = |g: &mut Gen, mut e: Ev, evs: &mut Vec<Ev>| {
            if evs.len() as u64 >= budget {
                return false;
            }
            e.event_id = g.next_id();
            e.event_time_us = now;
            now += g.rng.gen_range(5..240) * 1_000_000 + g.rng.gen_range(0..1000) * 1000;
            let logged_in = match login_mode {
                1 => true,
                2 => evs.len() >= 2,
                _ => false,
            };
            e.user = if logged_in { user } else { None };
            evs.push(e);
            true
        };
        let mut landing = base.clone();
        landing.page_url = "https://shop.example.com/".to_string();
        landing.referrer = self
            .rng
            .gen_bool(0.6)
            .then(|| REFERRERS[self.rng.gen_range(0..REFERRERS.len())]);
        if !push(self, landing, &mut evs) {
            return evs;
        }
        let views = self.rng.gen_range(1..=7);
        let mut viewed = Vec::new();
        for _ in 0..views {
            if self.rng.gen_bool(0.2) {
                let mut s = base.clone();
                s.event_type = "search";
                let q = SEARCHES[self.rng.gen_range(0..SEARCHES.len())];
                s.query = Some(q);
                s.page_url = format!("https://shop.example.com/search?q={}", q.replace(' ', "+"));
                if !push(self, s, &mut evs) {
                    return evs;
                }
            }
            let p = self.popular_product();
            viewed.push(p);
            let mut e = base.clone();
            e.event_type = "product_view";
            self.set_product(&mut e, p);
            if !push(self, e, &mut evs) {
                return evs;
            }
        }
        if !self.rng.gen_bool(0.4) {
            return evs;
        }
        let mut cart: Vec<(usize, i64)> = Vec::new();
        for _ in 0..self.rng.gen_range(1..=3) {
            let p = viewed[self.rng.gen_range(0..viewed.len())];
            let qty = self.rng.gen_range(1..=3);
            let mut e = base.clone();
            e.event_type = "add_to_cart";
            self.set_product(&mut e, p);
            e.quantity = Some(qty);
            if !push(self, e, &mut evs) {
                return evs;
            }
            cart.push((p, qty));
        }
        if cart.len() > 1 && self.rng.gen_bool(0.2) {
            let (p, qty) = cart.pop().expect("non-empty");
            let mut e = base.clone();
            e.event_type = "remove_from_cart";
            self.set_product(&mut e, p);
            e.quantity = Some(qty);
            if !push(self, e, &mut evs) {
                return evs;
            }
        }
        if self.rng.gen_bool(0.7) {
            let mut e = base.clone();
            e.event_type = "cart_view";
            e.page_url = "https://shop.example.com/cart".to_string();
            if !push(self, e, &mut evs) {
                return evs;
            }
        }
        if !self.rng.gen_bool(0.6) {
            return evs;
        }
        let mut e = base.clone();
        e.event_type = "checkout_started";
        e.page_url = "https://shop.example.com/checkout".to_string();
        if !push(self, e, &mut evs) {
            return evs;
        }
        for step in 1..=3 {
            if !self.rng.gen_bool(0.88) {
                return evs;
            }
            let mut e = base.clone();
            e.event_type = "checkout_step";
            e.checkout_step = Some(step);
            e.page_url = format!("https://shop.example.com/checkout/step-{step}");
            if !push(self, e, &mut evs) {
                return evs;
            }
        }
        if !self.rng.gen_bool(0.85) {
            return evs;
        }
        let mut e = base.clone();
        e.event_type = "payment_info";
        e.page_url = "https://shop.example.com/checkout/payment".to_string();
        if !push(self, e, &mut evs) {
            return evs;
        }
        if !self.rng.gen_bool(0.8) || (evs.len() + cart.len()) as u64 > budget {
            return evs;
        }
        self.order_counter += 1;
        let order_id = format!("o-{:08}", self.order_counter);
        let total: i64 = cart
            .iter()
            .map(|(p, q)| self.products[*p].price_cents * q)
            .sum();
        for (p, q) in cart.clone() {
            let mut e = base.clone();
            e.event_type = "purchase";
            self.set_product(&mut e, p);
            e.quantity = Some(q);
            e.order_id = Some(order_id.clone());
            e.revenue_cents = Some(total);
            e.page_url = "https://shop.example.com/checkout/confirmation".to_string();
            push(self, e, &mut evs);
        }
        evs
    }

    fn popular_product(&mut self) -> usize {
        let r: f64 = self.rng.gen();
        ((r * r * r) * self.products.len() as f64) as usize % self.products.len()
    }

    fn set_product(&self, e: &mut Ev, p: usize) {
        let prod = &self.products[p];
        e.product = Some(p);
        e.price_cents = Some(prod.price_cents);
        e.page_url = format!(
            "https://shop.example.com/p/{}/{}",
            prod.category.replace('/', "-"),
            prod.id
        );
    }

    fn account_session(&mut self, evs: &[Ev]) {
        let m = &mut self.m;
        m.sessions += 1;
        if evs[0].session_id.is_some() {
            m.sessions_with_client_id += 1;
        } else {
            m.sessions_without_client_id += 1;
        }
        let has = |t: &str| evs.iter().any(|e| e.event_type == t);
        m.sessions_with_add_to_cart += has("add_to_cart") as u64;
        m.sessions_reaching_checkout += has("checkout_started") as u64;
        m.sessions_with_payment_info += has("payment_info") as u64;
        if let Some(p) = evs.iter().find(|e| e.event_type == "purchase") {
            m.sessions_with_purchase += 1;
            m.orders += 1;
            *m.revenue_cents_by_currency
                .entry(p.currency.to_string())
                .or_default() += p.revenue_cents.unwrap_or(0);
            // One visitor is one customer (their user_id, once seen, else their anonymous_id).
            *self.buyers.entry(p.anon.clone()).or_default() += 1;
        }
        for e in evs {
            if let Some(u) = e.user {
                self.users_seen.insert(u);
            }
            self.anons_seen.insert(e.anon.clone());
            let day = chrono::DateTime::from_timestamp_micros(e.event_time_us)
                .expect("valid time")
                .format("%Y-%m-%d")
                .to_string();
            *m.events_per_day.entry(day).or_default() += 1;
            m.unique_events += 1;
        }
    }

    fn emit(&mut self, mut ev: Ev, file: usize) -> Result<()> {
        let n_files = self.sinks.len();
        let late = self.opts.dirty && self.rng.gen_bool(0.01);
        let mut target = file;
        if late {
            ev.received_us = ev.event_time_us + self.rng.gen_range(2 * 3600..72 * 3600) * 1_000_000;
            target = (file + 1 + self.rng.gen_range(0..2)).min(n_files - 1);
            self.m.late_events += 1;
        } else {
            ev.received_us = ev.event_time_us + self.rng.gen_range(50_000..3_000_000);
        }
        let messy = self.opts.dirty && self.rng.gen_bool(0.05);
        let line = self.render(&ev, messy, None);
        self.write_line(target, &line)?;
        self.m.valid_lines += 1;
        if self.opts.dirty {
            if self.rng.gen_bool(0.02) {
                let t = self.rng.gen_range(target..n_files);
                self.write_line(t, &line)?;
                self.m.valid_lines += 1;
                self.m.exact_duplicates += 1;
            } else if self.rng.gen_bool(0.003) {
                let mut resend = ev.clone();
                resend.received_us += self.rng.gen_range(10..600) * 1_000_000;
                resend.page_url.push_str("?resend=1");
                let line = self.render(&resend, false, None);
                let t = self.rng.gen_range(target..n_files);
                self.write_line(t, &line)?;
                self.m.valid_lines += 1;
                self.m.conflicting_duplicates += 1;
            }
            if self.rng.gen_bool(0.002) {
                let blank = if self.rng.gen_bool(0.5) { "" } else { "   " };
                self.write_line(target, blank)?;
                self.m.blank_lines += 1;
            }
        }
        Ok(())
    }

    /// One invalid line, of the next quarantine kind in turn.
    fn dirt(&mut self, at: i64, file: usize) -> Result<()> {
        let kinds = Reason::NATIVE;
        let reason = kinds[(self.dirt_counter % kinds.len() as u64) as usize];
        self.dirt_counter += 1;
        let v = self.rng.gen_range(0..self.visitors.len());
        let visitor = &self.visitors[v];
        let (country, currency) = COUNTRIES[visitor.country];
        let mut ev = Ev {
            event_id: format!("bad-{:08}", self.dirt_counter),
            event_time_us: at,
            received_us: at + 1_000_000,
            event_type: "product_view",
            user: None,
            anon: visitor.anon.clone(),
            session_id: Some(format!("s-bad-{:08}", self.dirt_counter)),
            product: Some(0),
            price_cents: Some(self.products[0].price_cents),
            quantity: None,
            currency,
            order_id: None,
            revenue_cents: None,
            checkout_step: None,
            page_url: "https://shop.example.com/p/x".to_string(),
            referrer: None,
            device: visitor.device,
            country,
            ip: visitor.ip.clone(),
            agent: visitor.agent,
            query: None,
        };
        let csv = self.opts.format == GenerateFormat::Csv;
        let line = match reason {
            Reason::BrokenJson => {
                let full = self.render(&ev, false, None);
                if csv {
                    format!("{},extra,columns", full)
                } else {
                    full[..full.len() / 2].to_string()
                }
            }
            Reason::MissingEventId => {
                ev.event_id = String::new();
                self.render(&ev, false, None)
            }
            Reason::MissingEventTime => self.render(&ev, false, Some(("event_time", ""))),
            Reason::BadTimestamp => {
                self.render(&ev, false, Some(("event_time", "2026-13-45T25:61:00Z")))
            }
            Reason::UnknownEventType => self.render(&ev, false, Some(("event_type", "hover"))),
            Reason::PriceNotNumber => self.render(&ev, false, Some(("price", "12,50"))),
            Reason::NegativePrice => {
                ev.price_cents = Some(-500);
                self.render(&ev, false, None)
            }
            Reason::PurchaseWithoutOrderId => {
                ev.event_type = "purchase";
                ev.quantity = Some(1);
                self.render(&ev, false, None)
            }
            Reason::FutureEventTime => {
                ev.event_time_us = ev.received_us + 3 * 86_400_000_000;
                self.render(&ev, false, None)
            }
            Reason::StaleEventTime => {
                // A device whose clock was reset: 1970-01-01 at the same time of day (or, for
                // data that starts in 1970, 400 days before it was received).
                const DAY_US: i64 = 86_400_000_000;
                ev.event_time_us %= DAY_US;
                if ev.received_us - ev.event_time_us <= 366 * DAY_US {
                    ev.event_time_us = ev.received_us - 400 * DAY_US;
                }
                self.render(&ev, false, None)
            }
            Reason::MissingAnonymousId => {
                ev.anon = String::new();
                self.render(&ev, false, None)
            }
            Reason::InvalidField => self.render(&ev, false, Some(("currency", "EURO"))),
            Reason::RejectedBySource | Reason::UnmappedLine => {
                unreachable!("the generator writes the canonical format")
            }
        };
        self.write_line(file, &line)?;
        *self
            .m
            .quarantine_by_reason
            .entry(reason.code().to_string())
            .or_default() += 1;
        Ok(())
    }

    fn write_line(&mut self, file: usize, line: &str) -> Result<()> {
        let s = &mut self.sinks[file];
        s.w.write_all(line.as_bytes())?;
        s.w.write_all(b"\n")?;
        s.bytes += line.len() as u64 + 1;
        self.m.lines_total += 1;
        Ok(())
    }

    /// Renders an event; `messy` varies the formatting of a valid event, `override_` replaces one
    /// field's text (an empty value removes the field).
    fn render(&mut self, e: &Ev, messy: bool, override_: Option<(&str, &str)>) -> String {
        let ts = |us: i64, offset: bool| {
            let dt = chrono::DateTime::from_timestamp_micros(us).expect("valid time");
            if offset {
                dt.with_timezone(&chrono::FixedOffset::east_opt(7200).expect("offset"))
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
            } else {
                dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            }
        };
        let offset = messy && self.rng.gen_bool(0.5);
        let event_type = if messy && self.rng.gen_bool(0.5) {
            format!("  {}\t", e.event_type.to_ascii_uppercase())
        } else {
            e.event_type.to_string()
        };
        let prod = e.product.map(|p| &self.products[p]);
        let money = |c: i64| format!("{}.{:02}", c / 100, (c % 100).abs()).replace("0.-", "-0.");
        let money = |c: i64| {
            if c < 0 {
                format!("-{}", money(-c))
            } else {
                money(c)
            }
        };
        let mut fields: Vec<(&str, Option<String>, bool)> = vec![
            (
                "event_id",
                (!e.event_id.is_empty()).then(|| e.event_id.clone()),
                true,
            ),
            ("event_time", Some(ts(e.event_time_us, offset)), true),
            ("received_at", Some(ts(e.received_us, false)), true),
            ("event_type", Some(event_type), true),
            ("user_id", e.user.map(|u| format!("u{u:07}")), true),
            (
                "anonymous_id",
                (!e.anon.is_empty()).then(|| e.anon.clone()),
                true,
            ),
            ("session_id", e.session_id.clone(), true),
            ("product_id", prod.map(|p| p.id.clone()), true),
            ("category", prod.map(|p| p.category.to_string()), true),
            ("brand", prod.map(|p| p.brand.to_string()), true),
            ("price", e.price_cents.map(money), false),
            ("quantity", e.quantity.map(|q| q.to_string()), false),
            (
                "currency",
                Some(if messy {
                    e.currency.to_ascii_lowercase()
                } else {
                    e.currency.to_string()
                }),
                true,
            ),
            ("order_id", e.order_id.clone(), true),
            ("revenue", e.revenue_cents.map(money), false),
            (
                "checkout_step",
                e.checkout_step.map(|s| s.to_string()),
                false,
            ),
            ("page_url", Some(e.page_url.clone()), true),
            ("referrer", e.referrer.map(str::to_string), true),
            ("device", Some(e.device.to_string()), true),
            ("country", Some(e.country.to_string()), true),
            (
                "email",
                e.user.map(|u| format!("shopper{u}@example.com")),
                true,
            ),
            ("ip", Some(e.ip.clone()), true),
            ("user_agent", Some(e.agent.to_string()), true),
        ];
        if let Some(q) = e.query {
            fields.push(("search_query", Some(q.to_string()), true));
        }
        if let Some((name, value)) = override_ {
            for f in fields.iter_mut() {
                if f.0 == name {
                    f.1 = (!value.is_empty()).then(|| value.to_string());
                    f.2 = true; // overrides are strings
                }
            }
        }
        match self.opts.format {
            GenerateFormat::Ndjson => {
                let mut out = String::with_capacity(600);
                out.push('{');
                let mut first = true;
                for (name, value, quoted) in fields {
                    let Some(value) = value else { continue };
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    out.push('"');
                    out.push_str(name);
                    out.push_str("\":");
                    if quoted {
                        out.push('"');
                        out.push_str(
                            &value
                                .replace('\\', "\\\\")
                                .replace('"', "\\\"")
                                .replace('\t', "\\t"),
                        );
                        out.push('"');
                    } else {
                        out.push_str(&value);
                    }
                }
                out.push('}');
                out
            }
            GenerateFormat::Csv => {
                let cols: Vec<String> = fields
                    .into_iter()
                    .filter(|f| f.0 != "search_query")
                    .map(|(_, v, _)| match v {
                        None => String::new(),
                        Some(v) if v.contains([',', '"', '\n']) => {
                            format!("\"{}\"", v.replace('"', "\"\""))
                        }
                        Some(v) => v,
                    })
                    .collect();
                cols.join(",")
            }
        }
    }
}
