//! A worker that takes a lease, works under it in steps, and stops the moment the lease is lost.
//!
//! A keep-alive task renews the lease every third of its ttl and cancels the work (a
//! `CancellationToken`) when a renewal is refused, fails, or cannot finish before the lease
//! would expire. Every step of the work writes its progress with a fenced statement, so a step
//! that runs after the lease was lost (the process was paused, say) changes nothing.
//!
//! Run (after `psql -f schema.sql`):
//!   cargo run --release -- [--dsn DSN] [--resource R] [--holder H] [--ttl-ms N] [--steps N] [--step-ms N]
//! Without --dsn the connection comes from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE.
//! Output and exit statuses are listed in README.md.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, timeout_at, Instant};
use tokio_postgres::{Client, Config, NoTls};
use tokio_util::sync::CancellationToken;

const EXIT_ERROR: u8 = 1;
const EXIT_NOT_ACQUIRED: u8 = 2;
const EXIT_LEASE_LOST: u8 = 3;

struct Args {
    dsn: Option<String>,
    resource: String,
    holder: String,
    ttl: Duration,
    steps: u32,
    step: Duration,
}

/// The lease this process holds.
#[derive(Clone)]
struct Lease {
    resource: String,
    token: i64,
    ttl: Duration,
}

enum Outcome {
    Done,
    Cancelled { at_step: u32 },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match run(args).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

async fn run(args: Args) -> Result<u8, tokio_postgres::Error> {
    let client = Arc::new(connect(&args).await?);
    let sent = Instant::now();
    let Some(lease) = acquire(&client, &args).await? else {
        println!("not acquired: {} is held by another holder", args.resource);
        return Ok(EXIT_NOT_ACQUIRED);
    };
    println!("acquired {} token={} ttl_ms={}", lease.resource, lease.token, lease.ttl.as_millis());

    let lost = CancellationToken::new();
    let keeper = tokio::spawn(keep_alive(client.clone(), lease.clone(), sent + lease.ttl, lost.clone()));
    let outcome = work(&client, &lease, &args, &lost).await;
    keeper.abort();
    match outcome? {
        Outcome::Done => {
            let released: bool = client
                .query_one("SELECT lease_release($1, $2)", &[&lease.resource, &lease.token])
                .await?
                .get(0);
            println!("done: {} steps, released={released}", args.steps);
            Ok(0)
        }
        Outcome::Cancelled { at_step } => {
            println!("work cancelled at step {at_step}/{}", args.steps);
            Ok(EXIT_LEASE_LOST)
        }
    }
}

async fn connect(args: &Args) -> Result<Client, tokio_postgres::Error> {
    let config = match &args.dsn {
        Some(dsn) => dsn.parse()?,
        None => config_from_environment(),
    };
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("connection ended: {error}");
        }
    });
    Ok(client)
}

/// The libpq environment variables that matter here (tokio-postgres does not read them).
fn config_from_environment() -> Config {
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let mut config = Config::new();
    config.host(var("PGHOST").unwrap_or_else(|| "localhost".into()));
    config.port(var("PGPORT").and_then(|port| port.parse().ok()).unwrap_or(5432));
    config.application_name("lease-rust-worker");
    if let Some(user) = var("PGUSER") {
        config.user(&user);
    }
    if let Some(password) = var("PGPASSWORD") {
        config.password(password);
    }
    if let Some(database) = var("PGDATABASE") {
        config.dbname(&database);
    }
    config
}

async fn acquire(client: &Client, args: &Args) -> Result<Option<Lease>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT lease_acquire($1, $2, $3::bigint * interval '1 millisecond')",
            &[&args.resource, &args.holder, &millis(args.ttl)],
        )
        .await?;
    let token: Option<i64> = row.get(0);
    Ok(token.map(|token| Lease { resource: args.resource.clone(), token, ttl: args.ttl }))
}

/// Renews every ttl/3 until the lease is lost, then cancels `lost`. `valid_until` is a safe
/// local bound on the lease's expiry: the send time of the last granted call plus the ttl.
async fn keep_alive(client: Arc<Client>, lease: Lease, mut valid_until: Instant, lost: CancellationToken) {
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = sleep(lease.ttl / 3) => {}
        }
        let sent = Instant::now();
        let reason = match timeout_at(valid_until, renew(&client, &lease)).await {
            Ok(Ok(true)) => {
                valid_until = sent + lease.ttl;
                println!("renewed token={}", lease.token);
                continue;
            }
            Ok(Ok(_)) => "renewal refused (expired, released, revoked or taken over)".to_string(),
            Ok(Err(error)) => format!("renewal failed: {error}"),
            Err(_) => "no renewal before the lease's expiry".to_string(),
        };
        lose(&lost, &reason);
        return;
    }
}

async fn renew(client: &Client, lease: &Lease) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT lease_renew($1, $2, $3::bigint * interval '1 millisecond')",
            &[&lease.resource, &lease.token, &millis(lease.ttl)],
        )
        .await?;
    Ok(row.get(0))
}

fn lose(lost: &CancellationToken, reason: &str) {
    if !lost.is_cancelled() {
        println!("lease lost: {reason}");
        lost.cancel();
    }
}

/// The work: `args.steps` steps, each some time of "computation" and a fenced progress write.
async fn work(
    client: &Client,
    lease: &Lease,
    args: &Args,
    lost: &CancellationToken,
) -> Result<Outcome, tokio_postgres::Error> {
    for step in 1..=args.steps {
        tokio::select! {
            _ = lost.cancelled() => return Ok(Outcome::Cancelled { at_step: step }),
            _ = sleep(args.step) => {}
        }
        if !write_progress(client, lease, step).await? {
            lose(lost, &format!("fenced write refused at step {step}"));
            return Ok(Outcome::Cancelled { at_step: step });
        }
        println!("step {step}/{}", args.steps);
    }
    Ok(Outcome::Done)
}

/// Records `step` only if `lease.token` still holds the resource; false if the fence refused it.
async fn write_progress(client: &Client, lease: &Lease, step: u32) -> Result<bool, tokio_postgres::Error> {
    let written = client
        .execute(
            "INSERT INTO rust_worker_progress (resource, token, step)
             SELECT $1::text, $2::bigint, $3::integer WHERE lease_check($1, $2)
             ON CONFLICT (resource) DO UPDATE
                 SET token = excluded.token, step = excluded.step, written_at = clock_timestamp()",
            &[&lease.resource, &lease.token, &(step as i32)],
        )
        .await?;
    Ok(written == 1)
}

fn millis(duration: Duration) -> i64 {
    duration.as_millis() as i64
}

fn parse_args(mut raw: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        dsn: None,
        resource: "rust-worker:demo".into(),
        holder: format!("rust-worker-{}", std::process::id()),
        ttl: Duration::from_millis(3000),
        steps: 10,
        step: Duration::from_millis(500),
    };
    while let Some(flag) = raw.next() {
        let value = raw.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|_| format!("{flag}: not a number: {value}"));
        match flag.as_str() {
            "--dsn" => args.dsn = Some(value.clone()),
            "--resource" => args.resource = value.clone(),
            "--holder" => args.holder = value.clone(),
            "--ttl-ms" => args.ttl = Duration::from_millis(number()?),
            "--steps" => args.steps = number()? as u32,
            "--step-ms" => args.step = Duration::from_millis(number()?),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if args.ttl < Duration::from_millis(30) {
        return Err("--ttl-ms must be at least 30".into());
    }
    Ok(args)
}
