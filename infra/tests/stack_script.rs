//! `scripts/stack` failure paths give readable errors. Each case runs the script against its own
//! empty state directory and free ports, and fails before starting anything, so a running stack
//! is never touched.

use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("stack-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `scripts/stack up` with the local services selected, in `state`, on free ports.
fn stack_up(state: &Path, kafka_port: u16) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .arg("up")
        .env_remove("KAFKA_BROKERS")
        .env_remove("DATABASE_URL")
        .env_remove("JAVA_HOME")
        .env("STACK_DIR", state.join("stack"))
        .env("STACK_KAFKA_PORT", kafka_port.to_string())
        .env("STACK_KAFKA_CONTROLLER_PORT", free_port().to_string())
        .env("STACK_PG_PORT", free_port().to_string())
        .env("STACKCTL", "/nonexistent/stackctl");
    cmd
}

/// A PATH holding only the usual tools, minus `without`.
fn path_without(state: &Path, without: &[&str]) -> String {
    let bin = state.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tools = [
        "bash", "cat", "cksum", "cut", "dirname", "flock", "grep", "head", "id", "java", "kill",
        "ls", "mkdir", "mv", "mvn", "ps", "readlink", "rm", "runuser", "sed", "sleep", "sort",
        "ss", "tail", "tr", "env", "setsid", "nohup", "uname", "basename", "which", "tee", "seq",
        "paste",
    ];
    for tool in tools.iter().filter(|t| !without.contains(t)) {
        for dir in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
            let target = Path::new(dir).join(tool);
            if target.exists() {
                let _ = symlink(&target, bin.join(tool));
                break;
            }
        }
    }
    bin.display().to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn kafka_port_in_use_names_the_port_and_the_override() {
    let state = Scratch::new("port");
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let output = stack_up(&state.0, port).output().unwrap();
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(err.contains(&format!("port {port}")), "{err}");
    assert!(err.contains("STACK_KAFKA_PORT="), "{err}");
    assert!(!err.contains("line "), "a bash error leaked: {err}");
}

#[test]
fn missing_java_says_what_to_install() {
    let state = Scratch::new("java");
    let path = path_without(&state.0, &["java"]);
    let output = stack_up(&state.0, free_port())
        .env("PATH", path)
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    assert!(err.contains("Java not found"), "{err}");
    assert!(err.contains("JAVA_HOME"), "{err}");
}

#[test]
fn missing_maven_says_what_to_install() {
    let state = Scratch::new("mvn");
    let path = path_without(&state.0, &["mvn"]);
    let output = stack_up(&state.0, free_port())
        .env("PATH", path)
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(!output.status.success(), "{err}");
    if err.contains("Java not found") {
        eprintln!("SKIPPED: no Java on this machine, so the Maven check is not reached");
        return;
    }
    assert!(err.contains("mvn (Apache Maven) not found"), "{err}");
}

#[test]
fn unknown_subcommand_prints_usage_and_fails() {
    let output = Command::new("bash")
        .arg(script())
        .arg("sideways")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("scripts/stack up"));
}
