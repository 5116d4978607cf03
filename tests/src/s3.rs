//! A real S3-compatible server for the object-storage tests: moto's server process on a loopback
//! port, with request authentication on (a user, an access key and a bucket made at start), killed
//! on drop. `tests/scripts/s3ctl.py` (boto3) looks into the bucket as an operator's AWS SDK would.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::serving::free_port;

pub struct S3Server {
    child: Child,
    pub port: u16,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// The venv's bin directory: `FERRY_S3_BIN` (scripts/test sets it), else target/s3-venv/bin.
fn bin_dir() -> PathBuf {
    std::env::var_os("FERRY_S3_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/s3-venv/bin"))
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/s3ctl.py")
}

impl S3Server {
    /// Starts a server with `bucket` in it; requests must carry the access key it returns.
    pub fn start(bucket: &str) -> S3Server {
        let bin = bin_dir();
        let port = free_port();
        let child = Command::new(bin.join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // The first three calls (user, policy, key) are not authenticated; every later one is.
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {}: {e} (scripts/test installs moto; or set FERRY_S3_BIN)",
                    bin.join("moto_server").display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut server = S3Server {
            child,
            port,
            bucket: bucket.to_string(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
        };
        let out = server.ctl(&["setup", bucket], None);
        let creds: serde_json::Value =
            serde_json::from_slice(&out).expect("s3ctl setup prints credentials");
        server.access_key_id = creds["access_key_id"].as_str().unwrap_or_default().into();
        server.secret_access_key = creds["secret_access_key"]
            .as_str()
            .unwrap_or_default()
            .into();
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `store:` for a prefix in the bucket.
    pub fn store_url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}?endpoint={}", self.bucket, self.endpoint())
    }

    /// `store:` and `store_credentials:` lines for ferry.yaml.
    pub fn config(&self, prefix: &str) -> String {
        format!(
            "store: {}\nstore_credentials:\n  access_key_id: {}\n  secret_access_key: \"{}\"\n",
            self.store_url(prefix),
            self.access_key_id,
            self.secret_access_key
        )
    }

    fn ctl(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let mut cmd = Command::new(bin_dir().join("python"));
        cmd.arg(script())
            .arg(self.endpoint())
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &self.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_access_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running s3ctl.py");
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.unwrap_or_default())
                .expect("s3ctl stdin");
        }
        let out = child.wait_with_output().expect("s3ctl.py");
        assert!(
            out.status.success(),
            "s3ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Every object under `prefix`: key → size.
    pub fn ls(&self, prefix: &str) -> BTreeMap<String, u64> {
        serde_json::from_slice(&self.ctl(&["ls", &self.bucket, prefix], None))
            .expect("s3ctl ls prints JSON")
    }

    /// Keys of the multipart uploads still open in the bucket.
    pub fn open_uploads(&self) -> Vec<String> {
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&self.ctl(&["uploads", &self.bucket], None))
                .expect("s3ctl uploads prints JSON");
        list.iter()
            .filter_map(|u| u["key"].as_str().map(str::to_string))
            .collect()
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        self.ctl(&["get", &self.bucket, key], None)
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        self.ctl(&["put", &self.bucket, key], Some(data));
    }

    pub fn rm(&self, key: &str) {
        self.ctl(&["rm", &self.bucket, key], None);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
