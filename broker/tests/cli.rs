//! The README's promise: `tern serve` starts on an empty data directory, and `tern send` /
//! `tern listen` exchange a message with it, with tokens from `tern token issue`.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};

const TERN: &str = env!("CARGO_BIN_EXE_tern");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(TERN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `tern serve` on `data` with port 0; returns the process (killed on drop) and the
/// native address it printed.
fn serve(data: &str) -> (Killed, String) {
    let (serve, native, _) = serve_with_mqtt(data);
    (serve, native)
}

/// `tern token issue` for `user`'s `device`.
fn token(data: &str, user: &str, device: &str) -> String {
    let (ok, out, err) = run(&["token", "issue", "--user", user, "--device", device, "--data-dir", data], None);
    assert!(ok, "{err}");
    out.trim().to_owned()
}

#[test]
fn serve_token_send_and_listen_work_as_the_readme_shows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (_serve, addr) = serve(data);
    let (alice, bob) = (token(data, "alice", "phone"), token(data, "bob", "laptop"));

    // Register bob's device (connect and leave) so both messages are after its sync point,
    // whenever the listener below gets connected.
    let (ok, _, err) = run(&["listen", "--server", &addr, "--token", &bob, "--device", "laptop", "--count", "0"], None);
    assert!(ok, "{err}");
    let mut listen = Command::new(TERN)
        .args(["listen", "--server", &addr, "--token", &bob, "--device", "laptop", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (ok, out, err) = run(
        &["send", "--server", &addr, "--token", &alice, "--device", "phone", "--to", "user/bob", "hello bob"],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("stored: conversation"), "{out}");
    let (ok, _, err) = run(
        &["send", "--server", &addr, "--token", &alice, "--device", "phone", "--to", "user/bob"],
        Some("from stdin\n"),
    );
    assert!(ok, "{err}");
    let mut printed = String::new();
    listen.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
    assert!(listen.wait().unwrap().success());
    let lines: Vec<&str> = printed.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2, "{printed}");
    assert!(lines[0].starts_with("seq=1 from=alice/phone") && lines[0].ends_with(": hello bob"), "{printed}");
    assert!(lines[1].starts_with("seq=2 from=alice/phone") && lines[1].ends_with(": from stdin"), "{printed}");

    // Bad input gets a clear message and a failing exit status.
    let (ok, _, err) =
        run(&["send", "--server", &addr, "--token", "forged", "--device", "phone", "--to", "user/bob", "x"], None);
    assert!(!ok);
    assert!(err.contains("BAD_TOKEN"), "{err}");
    let (ok, _, err) = run(&["token", "issue", "--user", "a:b", "--device", "d", "--data-dir", data], None);
    assert!(!ok && err.starts_with("tern: error:"), "{err}");
}

/// `tern send --e2ee` and `tern listen --e2ee`: key stores are created on first use, messages
/// decrypt across separate processes (the stores carry the sessions), and the broker's data
/// directory never holds the plaintext.
#[test]
fn send_and_listen_encrypt_end_to_end_with_key_stores() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (_serve, addr) = serve(data);
    let (alice, bob) = (token(data, "alice", "phone"), token(data, "bob", "laptop"));
    let alice_keys = dir.path().join("alice.keys");
    let bob_keys = dir.path().join("bob.keys");
    let (alice_keys, bob_keys) = (alice_keys.to_str().unwrap(), bob_keys.to_str().unwrap());

    for (round, secret) in ["first e2ee cli secret", "second e2ee cli secret"].iter().enumerate() {
        let mut listen = Command::new(TERN)
            .args([
                "listen", "--e2ee", "--server", &addr, "--token", &bob, "--device", "laptop", "--keys", bob_keys,
                "--count", "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the listener has published its keys.
        let mut err = BufReader::new(listen.stderr.take().unwrap());
        let mut said = String::new();
        while !said.contains("listening as bob/laptop") {
            assert!(err.read_line(&mut said).unwrap() > 0, "listen ended early: {said}");
        }
        assert_eq!(said.contains("created the E2EE key store"), round == 0, "{said}");
        let (ok, out, err_out) = run(
            &[
                "send", "--e2ee", "--server", &addr, "--token", &alice, "--device", "phone", "--keys", alice_keys,
                "--to", "user/bob", secret,
            ],
            None,
        );
        assert!(ok, "{err_out}");
        assert!(out.contains("encrypted for 1 device(s) of bob"), "{out}");
        let mut printed = String::new();
        listen.stdout.take().unwrap().read_to_string(&mut printed).unwrap();
        assert!(listen.wait().unwrap().success());
        assert!(
            printed.trim_end().ends_with(&format!("from=alice/phone conversation=1 (e2ee): {secret}")),
            "{printed}"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(bob_keys).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key store is private");
    }
    // A plain send to a user without E2EE still works; an --e2ee send to a user who never
    // published keys fails clearly.
    let (ok, _, err) = run(
        &[
            "send",
            "--e2ee",
            "--server",
            &addr,
            "--token",
            &alice,
            "--device",
            "phone",
            "--keys",
            alice_keys,
            "--to",
            "user/nobody",
            "x",
        ],
        None,
    );
    assert!(!ok && err.contains("has published no E2EE keys"), "{err}");
    let mut stack = vec![std::path::PathBuf::from(data)];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                assert!(!bytes.windows(10).any(|w| w == b"cli secret"), "{} holds plaintext", path.display());
            }
        }
    }
    assert!(files > 1, "the data directory was not scanned");
}

/// Starts `tern serve` with its MQTT listener on port 0: the process, the native address and
/// the MQTT port it printed.
fn serve_with_mqtt(data: &str) -> (Killed, String, String) {
    let mut serve = Command::new(TERN)
        .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0"])
        .args(["--data-dir", data])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(serve.stdout.take().unwrap());
    let serve = Killed(serve);
    let (mut native, mut mqtt) = (None, None);
    while mqtt.is_none() {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "tern serve did not print its MQTT address");
        let addr = line.split_whitespace().find(|w| w.parse::<std::net::SocketAddr>().is_ok()).map(str::to_owned);
        if line.contains("(native protocol)") {
            native = addr;
        } else if line.contains("(MQTT)") {
            mqtt = addr.map(|a| a.rsplit_once(':').unwrap().1.to_owned());
        }
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (serve, native.unwrap(), mqtt.unwrap())
}

/// Starts a command with piped stdout and stderr, killed on drop.
fn spawn_piped(cmd: &mut Command) -> Killed {
    Killed(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
}

/// The first line of `r` that contains `needle` (panics at end of stream).
fn line_with(r: &mut impl BufRead, needle: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "no line with {needle:?}");
        if line.contains(needle) {
            return line.trim_end().to_owned();
        }
    }
}

#[test]
fn tern_listen_and_tern_send_talk_with_mosquitto_clients() {
    let installed = Command::new("sh").args(["-c", "command -v mosquitto_pub && command -v stdbuf"]).output().unwrap();
    assert!(installed.status.success(), "mosquitto-clients are not installed: run scripts/test, which installs them");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (_serve, addr, port) = serve_with_mqtt(data);
    let (phone, sensor, bob) =
        (token(data, "alice", "phone"), token(data, "alice", "sensor1"), token(data, "bob", "laptop"));

    // A device's telemetry reaches `tern listen --subscribe`.
    let mut listen = Command::new(TERN);
    listen.args(["listen", "--server", &addr, "--token", &phone, "--device", "phone", "--count", "1"]);
    let mut listen = spawn_piped(listen.args(["--subscribe", "device/alice/#"]));
    let mut err = BufReader::new(listen.0.stderr.take().unwrap());
    line_with(&mut err, "subscribed to device/alice/#");
    let published = Command::new("mosquitto_pub")
        .args(["-p", &port, "-i", "sensor1", "-u", "alice", "-P", &sensor, "-t", "device/alice/sensor1/temp"])
        .args(["-m", "21.5", "-q", "1"])
        .status()
        .unwrap();
    assert!(published.success());
    let printed = line_with(&mut BufReader::new(listen.0.stdout.take().unwrap()), "from=alice/sensor1");
    assert!(printed.ends_with("topic=device/alice/sensor1/temp: 21.5"), "{printed}");
    assert!(listen.0.wait().unwrap().success());

    // `tern send` reaches a device subscribed with mosquitto_sub, over MQTT 3.1.1 and 5.
    for version in ["mqttv311", "mqttv5"] {
        let mut sub = Command::new("stdbuf");
        sub.args(["-oL", "mosquitto_sub", "-p", &port, "-i", "sensor1", "-u", "alice", "-P", &sensor]);
        let mut sub =
            spawn_piped(sub.args(["-V", version, "-d", "-q", "1", "-t", "user/alice", "-C", "1", "-F", "MSG %t %p"]));
        let mut out = BufReader::new(sub.0.stdout.take().unwrap());
        line_with(&mut out, "SUBACK");
        let text = format!("hi sensor over {version}");
        let (ok, _, err) =
            run(&["send", "--server", &addr, "--token", &bob, "--device", "laptop", "--to", "user/alice", &text], None);
        assert!(ok, "{err}");
        assert_eq!(line_with(&mut out, "MSG "), format!("MSG user/alice {text}"));
    }
}
