//! The hello-world page in a real browser: the `hello_world` example runs as its own process and
//! two headless Chromium pages (Debian's `chromium` and `chromium-driver`, driven through WebDriver
//! with `fantoccini`) use it: a greeting from one shows in both, a room announcement reaches only
//! the page that joined the room, a job completes on both, the analytics count rises.
//!
//! Without `chromedriver` on the machine the test says so and passes, unless
//! `SWITCHBOARD_REQUIRE_BROWSER=1` (CI sets it, after installing both). `CHROMEDRIVER` and
//! `CHROME_BIN` override the paths. The page's screenshot is written to `target/hello-world.png`;
//! with `UPDATE_SCREENSHOT=1`, also to `docs/hello-world.png`.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path));
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the hello-world example on a free port; returns it and its page's URL.
fn start_demo() -> (Process, String) {
    let mut child = support::hello_world_command()
        .spawn()
        .expect("the hello_world example starts");
    let stdout = child.stdout.take().unwrap();
    let process = Process(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("Open ") {
                let url = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(url);
            }
        }
    });
    let url = rx
        .recv_timeout(DEADLINE)
        .expect("hello_world printed its URL");
    (process, url)
}

fn start_chromedriver(driver: &Path) -> (Process, String) {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let process = Process(child);
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < DEADLINE, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (process, format!("http://127.0.0.1:{port}"))
}

async fn browser(webdriver: &str, chrome: Option<&Path>) -> Client {
    let mut options = json!({
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--window-size=1280,900"
        ]
    });
    if let Some(chrome) = chrome {
        options["binary"] = json!(chrome);
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(webdriver)
        .await
        .expect("a Chromium session")
}

async fn text(page: &Client, id: &str) -> String {
    page.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id} on the page: {e}"))
        .text()
        .await
        .unwrap()
}

/// Waits until `#id`'s text satisfies `check`; returns that text.
async fn wait_text(page: &Client, id: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = text(page, id).await;
        if check(&text) {
            return text;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "#{id} never showed {what}; it shows {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn click(page: &Client, id: &str) {
    page.find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn set_name(page: &Client, name: &str) {
    let input = page.find(Locator::Id("name")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(name).await.unwrap();
}

/// chromedriver and Chromium, or `None` (the test is skipped) when chromedriver is missing and
/// `SWITCHBOARD_REQUIRE_BROWSER` is not set.
fn drivers() -> Option<(PathBuf, Option<PathBuf>)> {
    let required = std::env::var_os("SWITCHBOARD_REQUIRE_BROWSER").is_some_and(|v| v != "0");
    let driver = find(
        "CHROMEDRIVER",
        &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
    );
    let Some(driver) = driver else {
        assert!(
            !required,
            "SWITCHBOARD_REQUIRE_BROWSER is set but chromedriver is missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: no chromedriver (apt-get install chromium chromium-driver)");
        return None;
    };
    Some((driver, find("CHROME_BIN", &["/usr/bin/chromium"])))
}

/// Writes a page's screenshot to `target/<name>`, and to `docs/<name>` with `UPDATE_SCREENSHOT=1`.
async fn screenshot(page: &Client, name: &str) {
    let png = page.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG image");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join(name), &png).unwrap();
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::write(docs.join(name), &png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_works_in_headless_chromium() {
    let Some((driver, chrome)) = drivers() else {
        return;
    };

    let (_demo, url) = start_demo();
    let (_driver, webdriver) = start_chromedriver(&driver);
    let a = browser(&webdriver, chrome.as_deref()).await;
    let b = browser(&webdriver, chrome.as_deref()).await;
    a.goto(&url).await.unwrap();
    b.goto(&url).await.unwrap();
    for page in [&a, &b] {
        wait_text(page, "connection", "the connection", |t| {
            t.starts_with("connected as")
        })
        .await;
    }

    // A greeting from one page shows in both, and so does the status a subscriber relays.
    set_name(&a, "Ada").await;
    click(&a, "greet").await;
    for page in [&a, &b] {
        wait_text(page, "greetings", "Ada's greeting", |t| {
            t.contains("Ada: Ada says hello!")
        })
        .await;
        wait_text(page, "system-status", "the relayed status", |t| {
            t == "Ada just sent a hello"
        })
        .await;
    }

    // Page A joins the support room; page B (not a member) announces: only A gets it.
    click(&a, "join").await;
    // (Both pages are in the durable `feed` room from the start.)
    wait_text(&a, "rooms", "the joined room", |t| t == "feed, support").await;
    set_name(&b, "Grace").await;
    click(&b, "announce").await;
    wait_text(&a, "announcements", "the announcement", |t| {
        t.contains("Grace says: the support desk is open")
    })
    .await;
    // B greets after the announcement was delivered; once B sees its own greeting, an
    // announcement for B would have arrived before it.
    click(&b, "greet").await;
    wait_text(&b, "greetings", "Grace's greeting", |t| {
        t.contains("Grace: Grace says hello!")
    })
    .await;
    assert_eq!(text(&b, "announcements").await, "", "B is not in the room");
    assert_eq!(text(&b, "rooms").await, "feed");

    // A job completes: both pages hear of it. A failing job: only its requester does.
    click(&a, "job").await;
    for page in [&a, &b] {
        wait_text(page, "jobs", "the completed job", |t| {
            t.contains("completed:") && t.contains("REPORT FOR ADA")
        })
        .await;
    }
    click(&b, "bad-job").await;
    wait_text(&b, "jobs", "the failed job", |t| {
        t.contains("failed: explode: asked to fail")
    })
    .await;

    // A page view is stored and counted; both pages show the new count.
    let before: u64 = text(&a, "analytics-count").await.parse().unwrap();
    click(&a, "track").await;
    for page in [&a, &b] {
        wait_text(page, "analytics-count", "a higher count", |t| {
            t.parse::<u64>().is_ok_and(|n| n > before)
        })
        .await;
    }
    // Nothing failed on A's side: its failing-job line never shows.
    assert!(!text(&a, "jobs").await.contains("failed"));

    // The durable feed: A drops its connection for 3 s (ticks go on, one a second); when it is
    // back it rejoins with its last position, gets the ticks it missed, and says so.
    let position = |t: &str| {
        t.strip_prefix("offset ")
            .and_then(|n| n.parse::<u64>().ok())
    };
    let before = wait_text(&a, "feed-position", "a feed position", |t| {
        position(t).is_some_and(|n| n >= 1)
    })
    .await;
    let before = position(&before).unwrap();
    click(&a, "drop").await;
    let recovery = wait_text(&a, "feed-recovery", "the recovery after the drop", |t| {
        t.starts_with("recovered")
    })
    .await;
    assert!(recovery.starts_with("recovered: true"), "{recovery}");
    let after = position(&text(&a, "feed-position").await).unwrap();
    assert!(
        after >= before + 2,
        "the ticks missed during 3 s came back: {before} -> {after}"
    );
    let ticks = text(&a, "feed").await;
    for n in before..=after {
        assert!(
            ticks.contains(&format!("#{n}:")),
            "tick #{n} missing from {ticks:?}"
        );
    }

    screenshot(&a, "hello-world.png").await;
    a.close().await.unwrap();
    b.close().await.unwrap();
}

/// The inspector page of an application in this process: its handler and route tables, message
/// rates, an error, the cluster's clients and a room, live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_page_shows_the_application_live_in_headless_chromium() {
    use switchboard::prelude::*;
    use switchboard::testing::{SocketClient, TestServer};

    let Some((driver, chrome)) = drivers() else {
        return;
    };
    let server = TestServer::start(
        Switchboard::builder()
            .without_linked_handlers()
            .inspector("/inspector")
            .subscriber(
                Subscriber::channels(["orders"])
                    .name("audit")
                    .description("logs every order")
                    .priority(10)
                    .handle(|Message(m): Message| async move { tracing::debug!(%m, "order") }),
            )
            .subscriber(
                Subscriber::matching([Matcher::pattern("orders*")])
                    .name("flaky")
                    .description("fails on the orders it cannot price")
                    .handle(|Message(m): Message| async move {
                        if m["price"].is_null() {
                            return Err("no price".into());
                        }
                        Ok::<_, switchboard::BoxError>(())
                    }),
            )
            .route("hello", "greet", |Data(name): Data<String>| async move {
                json!({"hi": name})
            }),
    )
    .await
    .unwrap();

    // A client in a room, and a steady stream of orders (one without a price).
    let mut client = SocketClient::connect(&server.url(None)).await;
    client
        .send_json(json!({"type": "system", "action": "joinRoom", "data": {"roomName": "lobby"}}))
        .await;
    let publisher = server.running.publisher();
    let feeding = tokio::spawn(async move {
        for n in 0u64.. {
            let order = if n == 3 {
                json!({"id": n})
            } else {
                json!({"id": n, "price": 10})
            };
            let _ = publisher.publish_including_sender("orders", &order).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let (_driver, webdriver) = start_chromedriver(&driver);
    let page = browser(&webdriver, chrome.as_deref()).await;
    page.goto(&format!("http://{}/inspector", server.addr))
        .await
        .unwrap();
    wait_text(&page, "status", "a live connection", |t| t == "live").await;
    let worker = server.running.worker_id().to_owned();
    wait_text(&page, "worker-id", "the worker's id", |t| t == worker).await;
    let handlers = wait_text(&page, "handlers", "the handler table with runs", |t| {
        t.contains("audit") && t.contains("flaky") && !t.contains(" 0 0 ")
    })
    .await;
    assert!(handlers.contains("\"orders\""), "{handlers}");
    assert!(handlers.contains("pattern(\"orders*\")"), "{handlers}");
    assert!(handlers.contains("logs every order"), "{handlers}");
    let routes = text(&page, "routes").await;
    assert!(routes.contains("hello:greet"), "{routes}");
    // The total of `orders` keeps rising, at a rate above zero.
    let first = wait_text(&page, "channels", "the orders channel", |t| {
        t.starts_with("orders")
    })
    .await;
    let total = |t: &str| -> u64 { t.split_whitespace().nth(2).unwrap().parse().unwrap() };
    let rising = wait_text(&page, "channels", "a higher total", |t| {
        t.starts_with("orders") && total(t) > total(&first)
    })
    .await;
    let rate: f64 = rising.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(rate > 0.0, "{rising}");
    wait_text(&page, "errors", "flaky's error", |t| {
        t.contains("flaky") && t.contains("failed: no price")
    })
    .await;
    wait_text(&page, "rooms", "the lobby", |t| t.starts_with("lobby 1")).await;
    // The socket client and the page's own connection.
    wait_text(&page, "workers", "this worker's two clients", |t| {
        t.contains("(this one) 2")
    })
    .await;
    screenshot(&page, "inspector.png").await;
    page.close().await.unwrap();
    feeding.abort();
    client.close().await;
    server.running.shutdown().await;
}
