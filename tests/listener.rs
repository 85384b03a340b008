//! The `/healthz` `/metrics` listener of `jinryu run` under the attacks of issue #11, with the
//! process's descriptor limit at 256 as on a small VM: clients that send headers slowly are cut
//! off, a flood of idle connections does not keep `/healthz` from answering, and running out of
//! file descriptors does not make the accept loop spin. One test in its own binary, because it
//! lowers the process's descriptor limit and measures the process's CPU time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jinryu::service::metrics::{ListenerLimits, serve};

/// `GET /healthz`, giving up after `wait`: the status line's code, or `None`.
fn healthz(addr: SocketAddr, wait: Duration) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, wait).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    s.set_write_timeout(Some(wait)).ok()?;
    write!(
        s,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.get(9..12)?.parse().ok()
}

/// Asks `/healthz` again and again for up to `within`; the time the first answer took.
fn answers_within(addr: SocketAddr, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if healthz(addr, Duration::from_secs(2)).is_some() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Whether the server closed `s` (EOF or reset), reading whatever it sent first.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(u.ru_utime) + t(u.ru_stime)
}

/// A Python process that waits `delay` seconds, then opens `n` connections to `addr` and holds
/// them for `secs`, without sending anything (its own descriptor limit raised to its hard limit).
fn hold_connections(addr: SocketAddr, n: usize, secs: u32, delay: f64) -> Child {
    let script = format!(
        "import resource, socket, sys, time\n\
         soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n\
         time.sleep({delay})\n\
         held = []\n\
         for _ in range({n}):\n\
         \x20   try:\n\
         \x20       held.append(socket.create_connection(('{ip}', {port}), timeout=5))\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         print(len(held), flush=True)\n\
         time.sleep({secs})\n",
        ip = addr.ip(),
        port = addr.port()
    );
    Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3")
}

struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn healthz_survives_slow_headers_floods_and_descriptor_exhaustion() {
    // A small VM's descriptor limit (the one the attack in the issue used).
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = 256.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cfg = jinryu::config::Config::chikaho("memory://");
    let metrics = jinryu::service::metrics_for(&cfg);
    let limits = ListenerLimits::default();
    let addr = rt
        .block_on(serve(metrics, "127.0.0.1:0".parse().unwrap(), limits))
        .unwrap();
    assert!(healthz(addr, Duration::from_secs(2)).is_some());

    // 1. Forty clients sending their headers a byte at a time.
    let mut slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        healthz(addr, Duration::from_secs(2)).is_some(),
        "/healthz must answer while 40 slow clients are connected"
    );
    let t0 = Instant::now();
    let mut open = slow.len();
    while open > 0 && t0.elapsed() < limits.header_read_timeout * 3 {
        std::thread::sleep(Duration::from_secs(1));
        open = 0;
        for s in &mut slow {
            if !closed_by_server(s) {
                let _ = s.write_all(b"X");
                open += 1;
            }
        }
    }
    assert_eq!(
        open,
        0,
        "{open} slow-header connections still open after {:?} (header timeout {:?})",
        t0.elapsed(),
        limits.header_read_timeout
    );
    drop(slow);

    // 2. Three hundred idle connections (more than the descriptor limit): over the cap they are
    // closed at once, the rest when the header timeout passes; /healthz answers meanwhile.
    let mut flood = Reap(hold_connections(addr, 300, 20, 0.0));
    let mut line = String::new();
    let mut out = flood.0.stdout.take().unwrap();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0] as char);
    }
    assert!(line.trim().parse::<usize>().unwrap() > 0, "{line}");
    let took = answers_within(addr, limits.header_read_timeout * 2);
    assert!(
        took.is_some(),
        "/healthz did not answer within {:?} under 300 held connections",
        limits.header_read_timeout * 2
    );
    drop(flood);

    // 3. The process out of file descriptors: accept fails (EMFILE) while connections wait in
    // the backlog. The loop must back off, not spin a core.
    // The client is started first (spawning needs descriptors) and connects a second later.
    let waiting = Reap(hold_connections(addr, 5, 8, 1.0));
    let mut files = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        files.push(f);
    }
    std::thread::sleep(Duration::from_millis(2000));
    let cpu0 = cpu_time();
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_time() - cpu0;
    drop(files);
    assert!(
        used < Duration::from_millis(1500),
        "the process used {used:?} of CPU in 3 s while out of descriptors (a spinning accept loop \
         uses ~3 s)"
    );
    assert!(
        answers_within(addr, Duration::from_secs(10)).is_some(),
        "/healthz must answer again once descriptors are free"
    );
    drop(waiting);
}
