//! `jinryu demo` — the README's first command — end to end on a full simulated month: every
//! sensor-direction-window equals the simulator's truth, every injected fault shows where it should
//! (in the CSV, and as an alert in the report).

#[tokio::test]
async fn demo_month_matches_the_truth_and_shows_every_fault() {
    let dir = tempfile::tempdir().unwrap();
    let opts = jinryu::simulate::options(2026, 10);
    let d = jinryu::demo::run(opts, dir.path()).await.unwrap();
    let (r, t, v, m) = (&d.report, &d.truth, &d.verification, &d.monthly);
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    assert!(r.balanced());
    assert_eq!(r.lines, t.lines);
    assert_eq!(r.people, t.people);
    assert_eq!(r.quarantined, t.malformed);
    assert_eq!(r.quarantined, 31, "one malformed message a day");
    assert_eq!(r.duplicates, t.retries);
    assert!(r.duplicates > 100);
    // The late burst: 30 minutes of J1-2 delivered after its windows were final.
    assert_eq!(r.late, t.late_messages);
    assert!(v.late_keys >= 4);
    // Missing: J2-3 silent 09:00-14:00 on the 12th (20 windows) and J2-5 faulty 10:00-10:30 on
    // the 25th (2 windows), both directions. Closed: 18 windows a night, 31 nights, 16 series.
    assert_eq!(m.missing, (20 + 2) * 2);
    assert_eq!(m.closed, 18 * 31 * 16);
    assert_eq!(m.rows, 31 * 96 * 16);
    assert_eq!(m.ok + m.missing + m.closed, m.rows);
    assert_eq!(m.people, t.people);
    assert!(
        v.zero_windows > 0,
        "quiet early-morning windows are measured zeros"
    );
    let csv = std::fs::read_to_string(&m.csv).unwrap();
    assert!(csv.contains("2026-10-12,09:00,J2-3,J2,north,,missing\r\n"));
    assert!(csv.contains("2026-10-25,10:15,J2-5,J2,south,,missing\r\n"));

    // The demo runs the checks (issue #10): J2-3's five silent hours are an alert, and the
    // report shows it; the quality summary says which month a quarantined message belongs to.
    assert!(d.alerts > 0);
    let html = std::fs::read_to_string(&m.report_file).unwrap();
    assert!(
        html.contains("<td>sensor_offline</td>") && html.contains("J2-3"),
        "the report lists the simulated fault"
    );
    let summary = std::fs::read_to_string(&m.summary_file).unwrap();
    assert!(
        summary.contains("counted in the month jinryu received it"),
        "{summary}"
    );
}
