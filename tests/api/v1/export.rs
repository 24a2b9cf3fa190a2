//! The CSV backup export: golden file, spreadsheet-injection defence, the unexported/mark round
//! trip, and an interrupted export marking nothing.

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::app::{FIXTURES, TestApp, spawn_app_with};
use crate::support::binary::run;
use crate::support::fixtures::{fixture, unique_v011};
use crate::support::poll::eventually;

const KEY: &str = "emr-key-0123456789";
const CONFIG: &str = "[api.clients.emr]\nkey = \"emr-key-0123456789\"\n";

async fn export(app: &TestApp, query: &str) -> (u16, String, Vec<u8>) {
    let response = app
        .client
        .get(app.url(&format!("/api/v1/export.csv?{query}")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

/// Parses RFC 4180 CSV (quoted cells may hold commas, quotes and line breaks).
fn rows(csv: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let mut chars = csv.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    rows
}

#[tokio::test]
async fn the_export_of_the_fixtures_matches_the_golden_file() {
    let app = spawn_app_with(CONFIG).await;
    for name in FIXTURES {
        assert_eq!(app.deliver("default", fixture(name)).await.status, 200);
    }
    let (status, content_type, body) = export(&app, "").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/csv; charset=utf-8");
    let text = String::from_utf8(body).unwrap();
    // Last Modified is the time of the test run: it is checked for shape, then set aside.
    let mut table = rows(&text);
    for row in table.iter_mut().skip(1) {
        assert!(row[16].ends_with('Z') && row[16].len() >= 20, "{}", row[16]);
        row[16] = "(modified)".into();
    }
    let normalised: String = table.iter().map(|r| r.join("|") + "\n").collect();
    let golden =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/api/v1/golden/fixtures-export.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &normalised).unwrap();
    }
    assert_eq!(normalised, std::fs::read_to_string(&golden).unwrap());
}

#[tokio::test]
async fn cells_a_spreadsheet_would_run_are_neutralised() {
    let app = spawn_app_with(CONFIG).await;
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    let hostile = unique_v011(&template, "TST-INJECT", "inject")
        .into_iter()
        .collect::<Vec<u8>>();
    let hostile = String::from_utf8(hostile)
        .unwrap()
        .replace(
            "\"Testpatient\"",
            "\"=HYPERLINK(\\\"http://evil.example.test\\\")\"",
        )
        .replace("555-010-0142", "+1 555 010 0142")
        .replace("avery.testpatient@example.test", "@SUM(A1:A9)");
    assert_eq!(
        app.deliver("default", hostile.into_bytes()).await.status,
        200
    );
    let (_, _, body) = export(&app, "excel=true").await;
    assert!(
        body.starts_with(b"\xEF\xBB\xBF"),
        "excel=true starts with a BOM"
    );
    let text = String::from_utf8(body[3..].to_vec()).unwrap();
    let table = rows(&text);
    let row = &table[1];
    assert!(row[1].starts_with("'=HYPERLINK("), "{}", row[1]);
    assert_eq!(row[10], "'+1 555 010 0142");
    assert_eq!(row[11], "'@SUM(A1:A9)");
}

/// The cells a spreadsheet makes of `csv` when it splits on `separator`, the way Excel imports a
/// file in a locale whose list separator that is: quotes count only where a cell begins, and
/// after a closing quote the rest up to the separator is taken as written.
fn spreadsheet_cells(csv: &str, separator: char) -> Vec<String> {
    let mut cells = Vec::new();
    let mut chars = csv.chars().peekable();
    loop {
        let mut cell = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        cell.push('"');
                        chars.next();
                        continue;
                    }
                    break;
                }
                cell.push(c);
            }
        }
        let mut ended = true;
        for c in chars.by_ref() {
            if c == separator || c == '\n' {
                ended = false;
                break;
            }
            cell.push(c);
        }
        cells.push(cell);
        if ended {
            return cells;
        }
    }
}

#[tokio::test]
async fn no_cell_starts_a_formula_whichever_separator_a_spreadsheet_splits_on() {
    let app = spawn_app_with(CONFIG).await;
    assert_eq!(
        app.deliver("default", fixture("edge/csv-semicolon.json"))
            .await
            .status,
        200
    );
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    let hostile = unique_v011(&template, "TST-LOCALE", "locale")
        .into_iter()
        .collect::<Vec<u8>>();
    let hostile = String::from_utf8(hostile)
        .unwrap()
        .replace("555-010-0142", "555;-1+cmd|' /C calc'!A0")
        .replace("avery.testpatient@example.test", "x\\t=1+1, @SUM(A1)");
    assert_eq!(
        app.deliver("default", hostile.into_bytes()).await.status,
        200
    );
    let (_, _, body) = export(&app, "").await;
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("calc"), "the hostile text is exported");
    for separator in [',', ';', '\t'] {
        for cell in spreadsheet_cells(&text, separator) {
            let start = cell.trim_start_matches([' ', '\r']);
            assert!(
                !start.starts_with(['=', '+', '-', '@']),
                "split on {separator:?}, a cell starts a formula: {cell:?}"
            );
        }
    }
}

#[tokio::test]
async fn unexported_only_and_mark_exported_round_trip() {
    let app = spawn_app_with(CONFIG).await;
    for name in FIXTURES {
        app.deliver("default", fixture(name)).await;
    }
    let (_, _, first) = export(&app, "unexported_only=true&mark_exported=true").await;
    let first = rows(&String::from_utf8(first).unwrap());
    assert_eq!(first.len(), 4, "header and three referrals");
    assert!(
        first[1..].iter().all(|r| r[17].is_empty()),
        "never exported before"
    );

    // Marking happens once the file is complete: poll (bounded) until it has.
    let mut again = Vec::new();
    eventually("everything marked exported", async || {
        let (_, _, body) = export(&app, "unexported_only=true").await;
        again = rows(&String::from_utf8(body).unwrap());
        again.len() == 1
    })
    .await;
    assert_eq!(again.len(), 1, "everything was marked exported");

    // A referral modified after its export is unexported again, and shows when it was exported.
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    app.deliver(
        "default",
        unique_v011(&template, "TST-0011-AAAA", "later-update"),
    )
    .await;
    let (_, _, body) = export(&app, "unexported_only=true").await;
    let table = rows(&String::from_utf8(body).unwrap());
    assert_eq!(table.len(), 2);
    assert_eq!(table[1][0], "TST-0011-AAAA");
    assert!(
        !table[1][17].is_empty(),
        "Exported At shows the earlier export"
    );

    // Date filters are inclusive and either side may be open.
    let (_, _, body) = export(&app, "from=2999-01-01").await;
    assert_eq!(rows(&String::from_utf8(body).unwrap()).len(), 1);
    let (_, _, body) = export(&app, "to=2000-01-01").await;
    assert_eq!(rows(&String::from_utf8(body).unwrap()).len(), 1);
    let today = time::OffsetDateTime::now_utc().date();
    let (_, _, body) = export(&app, &format!("from={today}&to={today}")).await;
    assert_eq!(rows(&String::from_utf8(body).unwrap()).len(), 4);
    let (status, _, _) = export(&app, "from=last-week").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn an_interrupted_export_marks_nothing() {
    let app = spawn_app_with(CONFIG).await;
    // Rows of about 8 KB (a long referral note), so the file is far larger than what the
    // server's socket and HTTP buffers can hold.
    let template = String::from_utf8(fixture("v0.11-add-service-request.json"))
        .unwrap()
        .replace(
            "Exertional chest pain for 3 weeks",
            &"exertional chest pain ".repeat(400),
        );
    for n in 0..1000 {
        let name = format!("TST-BULK-{n:04}");
        assert_eq!(
            app.deliver("default", unique_v011(&template, &name, &name))
                .await
                .status,
            200
        );
    }
    // Ask for the export with marking through a small receive window, read a little, and
    // hang up: the rest never leaves the server.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    let request = format!(
        "GET /api/v1/export.csv?mark_exported=true HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 512];
    let _ = stream.read(&mut first).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(stream);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let (_, _, body) = export(&app, "unexported_only=true").await;
    let table = rows(&String::from_utf8(body).unwrap());
    assert_eq!(table.len(), 1001, "an interrupted export marks nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_exports_through_the_service_or_from_a_stopped_data_dir() {
    let dir = tempfile::TempDir::new().unwrap();
    let data = dir.path().join("data");
    let app = crate::support::app::spawn_app_in(&data, CONFIG).await;
    for name in FIXTURES {
        app.deliver("default", fixture(name)).await;
    }
    let data_arg = data.to_str().unwrap().to_owned();
    let out = dir.path().join("through-service.csv");
    let (url, out_arg, data_for_locked) = (
        format!("http://{}", app.addr),
        out.to_str().unwrap().to_owned(),
        data_arg.clone(),
    );
    let (locked, through) = tokio::task::spawn_blocking(move || {
        (
            run(&["export", "--data-dir", &data_for_locked], &[]),
            run(
                &["export", "--url", &url, "--key", KEY, "--out", &out_arg],
                &[],
            ),
        )
    })
    .await
    .unwrap();
    assert!(!locked.status.success());
    assert!(String::from_utf8_lossy(&locked.stderr).contains("--url and --key"));
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    assert_eq!(rows(&std::fs::read_to_string(&out).unwrap()).len(), 4);
    app.stop().await;
    // The export's own task (audit entry, marking) may still hold the store for a moment.
    eventually("the export's task letting go of the store", async || {
        referral_relay::store::SledStore::open(std::path::Path::new(&data_arg)).is_ok()
    })
    .await;

    let direct = dir.path().join("direct.csv");
    let direct_arg = direct.to_str().unwrap().to_owned();
    let first = run(
        &[
            "export",
            "--data-dir",
            &data_arg,
            "--unexported-only",
            "--mark-exported",
            "--out",
            &direct_arg,
        ],
        &[],
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(rows(&std::fs::read_to_string(&direct).unwrap()).len(), 4);
    let again = run(
        &["export", "--data-dir", &data_arg, "--unexported-only"],
        &[],
    );
    assert!(again.status.success());
    assert_eq!(
        rows(&String::from_utf8(again.stdout).unwrap()).len(),
        1,
        "all marked"
    );
    let audit = run(&["audit", "list", "--data-dir", &data_arg], &[]);
    let log = String::from_utf8(audit.stdout).unwrap();
    assert_eq!(log.matches("EXPORTED_REFERRALS").count(), 3);
    assert!(log.contains("\"actor\":\"cli:"));
}
