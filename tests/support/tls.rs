//! Certificates for the TLS tests, made once per test binary with the
//! `openssl` CLI: a self-signed CA, a server certificate it signs (valid for
//! 127.0.0.1 and localhost, and not for 127.0.0.2, so a host-name check can
//! be seen to fail), and a second CA that signed nothing the servers hold
//! (the "wrong CA"). EC P-256 keys: quick to make, and every client here
//! speaks them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct TestCerts {
    pub dir: PathBuf,
    /// The CA that signed the servers' certificate.
    pub ca: PathBuf,
    /// A CA that signed nothing the servers hold.
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// The certificates shared by every TLS server of this binary.
pub fn certs() -> &'static TestCerts {
    static CERTS: OnceLock<TestCerts> = OnceLock::new();
    CERTS.get_or_init(make)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn self_signed_ca(dir: &Path, name: &str, subject: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "3650",
            "-subj",
            subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn make() -> TestCerts {
    let dir = super::temp_dir("tidewater-certs");
    super::spawn_watchdog(&format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; rm -rf {}",
        std::process::id(),
        dir.display()
    ));
    self_signed_ca(&dir, "ca", "/CN=tidewater test CA");
    self_signed_ca(&dir, "other-ca", "/CN=some other CA");
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
         basicConstraints = CA:FALSE\n\
         keyUsage = critical, digitalSignature, keyEncipherment\n\
         extendedKeyUsage = serverAuth\n",
    )
    .expect("write server.ext");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    TestCerts {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        dir,
    }
}
