//! The deployment files under docker/, on this machine: the systemd unit passes
//! `systemd-analyze verify` (and rates "OK" in `systemd-analyze security`), docker/compose.yaml
//! builds and runs the image the way the Dockerfile means it, and the image built from
//! docker/Dockerfile runs `jinryu demo` and `jinryu run` (against the test broker) as uid 10001 on
//! a read-only root file system, answering /healthz and its HEALTHCHECK.
//!
//! There is no Docker engine or image registry here, so podman builds and runs the image (as root,
//! with runc, cgroupfs, host networking and the host's ulimits: a containers.conf with
//! `default_ulimits = []`, written by this test under /var/cache/jinryu/podman). The Debian 12
//! base image is made with `debootstrap --variant=minbase bookworm` once (about a minute; the root
//! file system and the imported image `localhost/jinryu-base:bookworm` are kept, so later runs
//! skip it); the image is then built from the test's own binary (seconds when cached).
//! `bash .ci/setup` installs podman, runc and debootstrap; without them these tests fail.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use jinryu::config::Config;
use jinryu::sink::store::Storage;
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The debootstrap root file system, its completion marker and podman's containers.conf.
const CACHE: &str = "/var/cache/jinryu/podman";
const BASE: &str = "localhost/jinryu-base:bookworm";
const IMAGE: &str = "localhost/jinryu:test";
/// The image's user (docker/Dockerfile).
const UID: u32 = 10001;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `c` to the end with stdout and stderr captured.
fn output(c: &mut Command) -> Output {
    let shown = format!("{c:?}");
    c.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("{shown}: {e} (bash .ci/setup installs podman, runc and debootstrap)")
    })
}

/// Runs `c`, asserts success, returns its stdout.
fn check(c: &mut Command) -> String {
    let shown = format!("{c:?}");
    let out = output(c);
    assert!(
        out.status.success(),
        "{shown}: {}\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// `podman` with the settings this machine needs.
fn podman() -> Command {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    let conf = CONF.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "tests/container.rs runs podman as root (as CI does): rootless podman cannot hand the \
             container's uid {UID} a host directory"
        );
        std::fs::create_dir_all(CACHE).unwrap();
        let path = Path::new(CACHE).join("containers.conf");
        let want = "# Written by tests/container.rs. Podman's default ulimits (nofile 1048576) \
                    cannot be set on this machine:\n# containers keep the host's.\n\
                    [containers]\ndefault_ulimits = []\n";
        if std::fs::read_to_string(&path).ok().as_deref() != Some(want) {
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, want).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        path
    });
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", conf).args([
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]);
    c
}

/// The Debian 12 base image: debootstrap once, `podman import` when podman does not have it.
fn base_image() {
    if output(podman().args(["image", "exists", BASE]))
        .status
        .success()
    {
        return;
    }
    let rootfs = Path::new(CACHE).join("rootfs-bookworm");
    let done = Path::new(CACHE).join("rootfs-bookworm.complete");
    if !done.exists() {
        let t0 = Instant::now();
        let _ = std::fs::remove_dir_all(&rootfs);
        check(
            Command::new("debootstrap")
                .args(["--variant=minbase", "bookworm"])
                .arg(&rootfs)
                .arg("http://deb.debian.org/debian"),
        );
        std::fs::write(&done, "").unwrap();
        eprintln!("debootstrap --variant=minbase bookworm: {:?}", t0.elapsed());
    }
    let t0 = Instant::now();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let import = podman()
        .args(["import", "--change", "CMD [\"bash\"]", "-", BASE])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .expect("podman (bash .ci/setup installs it)");
    assert!(tar.wait().unwrap().success(), "tar of {}", rootfs.display());
    assert!(
        import.status.success(),
        "podman import: {}",
        text(&import.stderr)
    );
    eprintln!("podman import {BASE}: {:?}", t0.elapsed());
}

fn image_id(name: &str) -> Option<String> {
    let out = output(podman().args(["image", "inspect", "--format", "{{.Id}}", name]));
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_string())
}

/// docker/Dockerfile built with this test's binary (once per test process); the previous build's
/// image is removed when it differs.
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        base_image();
        // The build context: what docker/Dockerfile copies from the repository, and the binary.
        let ctx = tempfile::tempdir().unwrap();
        for dir in ["docker", "formats"] {
            std::fs::create_dir(ctx.path().join(dir)).unwrap();
        }
        let mut sources = vec![PathBuf::from("docker/jinryu.toml")];
        for e in std::fs::read_dir(Path::new(ROOT).join("formats")).unwrap() {
            sources.push(Path::new("formats").join(e.unwrap().file_name()));
        }
        for f in sources {
            std::fs::copy(Path::new(ROOT).join(&f), ctx.path().join(&f)).unwrap();
        }
        let bin = ctx.path().join("jinryu");
        if std::fs::hard_link(env!("CARGO_BIN_EXE_jinryu"), &bin).is_err() {
            std::fs::copy(env!("CARGO_BIN_EXE_jinryu"), &bin).unwrap();
        }
        let old = image_id(IMAGE);
        let t0 = Instant::now();
        check(
            podman()
                .args(["build", "--pull=never", "--format", "docker"])
                .args(["--network", "host", "--build-arg"])
                .arg(format!("BASE_IMAGE={BASE}"))
                .args(["--build-arg", "JINRYU_BIN=jinryu", "-t", IMAGE, "-f"])
                .arg(Path::new(ROOT).join("docker/Dockerfile"))
                .arg(ctx.path()),
        );
        eprintln!("podman build {IMAGE}: {:?}", t0.elapsed());
        if let Some(old) = old
            && image_id(IMAGE).as_deref() != Some(old.as_str())
        {
            // Its layers go with it (still in use by a container: kept).
            let _ = output(podman().args(["rmi", &old]));
        }
    });
    IMAGE
}

/// A container removed (stopped first, with its anonymous volume) when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "--force", "--volumes", "--time", "10", &self.0])
            .stdin(Stdio::null())
            .output();
    }
}

impl Container {
    fn new(what: &str) -> Container {
        Container(format!("jinryu-test-{what}-{}", std::process::id()))
    }

    fn inspect(&self, format: &str) -> String {
        check(podman().args(["inspect", "--format", format, &self.0]))
            .trim()
            .to_string()
    }

    fn logs(&self) -> String {
        let out = output(podman().args(["logs", &self.0]));
        text(&out.stdout) + &text(&out.stderr)
    }
}

/// `podman run` with this machine's flags and the image's intended ones: read-only root, /tmp on
/// tmpfs, `dir` as the data volume.
fn run_args(c: &Container, data: &Path) -> Vec<String> {
    [
        "run",
        "--name",
        &c.0,
        "--ulimit",
        "host",
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "-v",
        &format!("{}:/var/lib/jinryu", data.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A host directory the container's user can write.
fn volume(parent: &Path, name: &str) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    std::os::unix::fs::chown(&d, Some(UID), Some(UID)).unwrap();
    d
}

/// Every file under `dir` (recursively).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn assert_owned_by_image_user(dir: &Path) {
    let all = files(dir);
    assert!(!all.is_empty(), "nothing written under {}", dir.display());
    for f in all {
        let uid = std::fs::metadata(&f).unwrap().uid();
        assert_eq!(uid, UID, "{} is owned by uid {uid}", f.display());
    }
}

#[test]
fn systemd_unit_verifies_and_is_sandboxed() {
    let unit =
        std::fs::read_to_string(Path::new(ROOT).join("docker/systemd/jinryu-run.service")).unwrap();
    // `verify` wants ExecStart's binary to exist: this test's binary stands in for the installed one.
    assert!(unit.contains("ExecStart=/usr/local/bin/jinryu run "));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jinryu-run.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/jinryu", env!("CARGO_BIN_EXE_jinryu")),
    )
    .unwrap();
    let out = output(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .current_dir(dir.path()),
    );
    // verify exits 0 on unknown keys and bad values, it only prints them: no line may name the unit.
    let said = text(&out.stdout) + &text(&out.stderr);
    let ours: Vec<&str> = said.lines().filter(|l| l.contains("jinryu")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
    let out = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&path),
    );
    let said = text(&out.stdout) + &text(&out.stderr);
    let level: f64 = said
        .split("Overall exposure level for jinryu-run.service:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{said}"));
    assert!(
        level <= 2.0,
        "exposure {level} (systemd's OK is below 2):\n{said}"
    );
    for key in [
        "IPAddressDeny=any",
        "IPAddressAllow=localhost",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
    ] {
        assert!(unit.lines().any(|l| l == key), "{key} missing");
    }
}

#[test]
fn compose_file_runs_the_image_as_it_is_meant_to() {
    let script = r#"
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
s = d["services"]
j = s["jinryu"]
b = j["build"]
assert b["context"] == ".." and b["dockerfile"] == "docker/Dockerfile", b
assert b["args"]["JINRYU_BROKERS"] == "kafka:9092", b
assert b["args"]["JINRYU_STORAGE"].startswith("s3://"), b
assert j["read_only"] is True and "/tmp" in j["tmpfs"], j
assert any(v.endswith(":/var/lib/jinryu") for v in j["volumes"]), j["volumes"]
assert any(p.endswith(":9464") for p in j["ports"]), j["ports"]
assert j["user"] == "10001:10001", j["user"]
for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL"):
    assert k in j["environment"], k
assert j["environment"]["AWS_ENDPOINT_URL"].startswith("http://s3:"), j["environment"]
assert s["kafka"]["image"].startswith("apache/kafka:"), s["kafka"]
assert s["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
assert set(j["depends_on"]) == {"kafka-init", "s3-init"}, j["depends_on"]
print("ok")
"#;
    let out = check(
        Command::new("python3")
            .args(["-c", script])
            .arg(Path::new(ROOT).join("docker/compose.yaml")),
    );
    assert_eq!(out.trim(), "ok");
    let dockerfile = std::fs::read_to_string(Path::new(ROOT).join("docker/Dockerfile")).unwrap();
    for line in [
        "USER 10001:10001",
        "EXPOSE 9464",
        "ENTRYPOINT [\"jinryu\"]",
        "ARG BASE_IMAGE=debian:bookworm-slim",
    ] {
        assert!(dockerfile.lines().any(|l| l == line), "{line} missing");
    }
}

#[test]
fn image_runs_the_demo_on_a_read_only_root() {
    let image = image();
    let tmp = tempfile::tempdir().unwrap();
    let data = volume(tmp.path(), "data");
    let c = Container::new("demo");
    let t0 = Instant::now();
    let out = output(podman().args(run_args(&c, &data)).args([
        "--no-healthcheck",
        image,
        "demo",
        "--month",
        "2026-10",
    ]));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "jinryu demo in the image: {}\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    eprintln!("jinryu demo in the image: {:?}", t0.elapsed());
    assert!(
        stdout.contains("== jinryu demo: Sapporo Chi-Ka-Ho, 2026-10 ==")
            && stdout.contains("equal the simulator's truth"),
        "{stdout}"
    );
    // It wrote into its working directory, the volume, as the image's user.
    let csv = data.join("jinryu-demo/2026_10.csv");
    assert!(csv.is_file(), "{} missing:\n{stdout}", csv.display());
    assert_owned_by_image_user(&data);
    assert_eq!(c.inspect("{{.HostConfig.ReadonlyRootfs}}"), "true");
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0");
}

#[test]
fn image_is_healthy_with_its_own_config() {
    // The built-in configuration (docker/jinryu.toml listening on 0.0.0.0:9464, brokers
    // kafka:9092, tables in the data volume) loads, and the HEALTHCHECK as written passes. In a
    // network of its own there is no Kafka: the service keeps retrying and stays alive.
    let image = image();
    let c = Container::new("healthz");
    check(podman().args([
        "run",
        "--name",
        &c.0,
        "--detach",
        "--ulimit",
        "host",
        "--network",
        "none",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--health-interval",
        "disable",
        image,
    ]));
    let t0 = Instant::now();
    loop {
        let out = output(podman().args(["healthcheck", "run", &c.0]));
        if out.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the HEALTHCHECK did not pass in 60 s: {}{}\n{}",
            text(&out.stdout),
            text(&out.stderr),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let conf = check(podman().args(["exec", &c.0, "cat", "/etc/jinryu/jinryu.toml"]));
    for line in [
        "listen = \"0.0.0.0:9464\"",
        "brokers = \"kafka:9092\"",
        "url = \"file:///var/lib/jinryu\"",
    ] {
        assert!(
            conf.lines().any(|l| l.starts_with(line)),
            "{line} missing:\n{conf}"
        );
    }
    assert!(
        c.logs().contains("/metrics on http://0.0.0.0:9464"),
        "{}",
        c.logs()
    );
    check(podman().args(["stop", "--time", "60", &c.0]));
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0", "{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_the_service_against_kafka() {
    let image = image();
    let tmp = tempfile::tempdir().unwrap();
    let broker = Broker::start(tmp.path());
    create_topic(&broker.brokers(), "events", 4);
    let data = volume(tmp.path(), "data");
    let port = free_port();
    // The test's configuration (fast service clocks) for the container's paths; it listens on
    // every address, as the image's own configuration does (host network here).
    let config = |url: &str| {
        config_text(url, &broker.brokers(), "events", "container-test").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"0.0.0.0:{port}\""),
        )
    };
    let inside = config("file:///var/lib/jinryu");
    assert!(inside.contains(&format!("0.0.0.0:{port}")));
    let cfg_path = tmp.path().join("jinryu.toml");
    std::fs::write(&cfg_path, &inside).unwrap();
    let host_url = format!("file://{}", data.display());
    let cfg = Config::parse(&config(&host_url), "test").unwrap();
    let storage = Storage::open(&host_url).unwrap();

    // The image's default command (`run --config /etc/jinryu/jinryu.toml`) with this config
    // mounted over the built-in one.
    let c = Container::new("run");
    check(
        podman()
            .args(run_args(&c, &data))
            .args(["--detach", "--health-interval", "disable", "-v"])
            .arg(format!("{}:/etc/jinryu/jinryu.toml:ro", cfg_path.display()))
            .arg(image),
    );
    let (stream, truth) = simulated(1, true);
    let n = records(&stream);
    let published = publish_stream(&cfg.kafka.clone().unwrap(), stream)
        .await
        .unwrap();
    assert_eq!(published, n);
    let t0 = Instant::now();
    let cps = wait_complete(&storage, n, Duration::from_secs(180)).await;
    eprintln!(
        "jinryu run in the image: {n} records committed in {:?}",
        t0.elapsed()
    );
    let accepted: u64 = cps.iter().map(|c| c.totals.accepted).sum();
    let quarantined: u64 = cps.iter().map(|c| c.totals.quarantined).sum();
    assert_eq!(accepted + quarantined, n);
    assert_eq!(quarantined, truth.malformed);

    // /healthz from the host, and the image's HEALTHCHECK (bash /dev/tcp) inside.
    let addr = format!("127.0.0.1:{port}");
    let (status, body) =
        try_http_get(&addr, "/healthz").unwrap_or_else(|| panic!("no answer at {addr}"));
    assert_eq!((status, body.trim()), (200, "ok"), "{}", c.logs());
    assert!(
        c.inspect("{{.Config.Healthcheck.Test}}")
            .contains("/dev/tcp/127.0.0.1/9464"),
        "the image's HEALTHCHECK"
    );
    // The HEALTHCHECK asks port 9464, the image's own listen address: this test's config uses
    // another port, so ask the same way on that one.
    let probe = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\n\
         Connection: close\\r\\n\\r\\n' >&3 && read -r -t 4 _ code _ <&3 && [ \"$code\" = 200 ]"
    );
    check(podman().args(["exec", &c.0, "bash", "-c", &probe]));

    // Not root, read-only root file system, and every file it wrote belongs to its user.
    let pid = c.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["10001"; 4],
        "{uids}"
    );
    assert_eq!(c.inspect("{{.HostConfig.ReadonlyRootfs}}"), "true");
    assert_owned_by_image_user(&data);

    // podman stop = SIGTERM to jinryu as PID 1: it commits and exits 0.
    check(podman().args(["stop", "--time", "60", &c.0]));
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0", "{}", c.logs());
    assert!(c.logs().contains("stopped cleanly"), "{}", c.logs());

    // The tables it wrote through the volume equal the simulator's truth.
    let ctx = jinryu::jobs::context(&cfg, &storage).await.unwrap();
    let v = jinryu::demo::verify(&ctx, &cfg, &truth).await.unwrap();
    assert!(v.mismatches.is_empty(), "{:#?}", v.mismatches);
    assert!(v.live_windows > 100, "{} live windows", v.live_windows);
}
