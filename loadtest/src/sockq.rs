//! Input waiting unread in the run's WebSocket connections, from the kernel's socket tables
//! (`/proc/net/tcp`, `/proc/net/tcp6`, the `rx_queue` column `ss` shows as Recv-Q).
//!
//! Two sides of the same connections: the generator's sockets hold answers it has not read yet
//! (the generator itself is behind, and its latencies include that wait), and, when the gateway
//! runs on this machine, the gateway's sockets hold commands it has not read yet. Divided by the
//! second's input rate, a backlog says roughly how long a byte arriving then waits before its
//! reader gets to it.

use std::collections::HashSet;
use std::net::SocketAddr;

const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];
/// `st` of an established connection.
const ESTABLISHED: &str = "01";

/// The connections to look for: the gateway's port and the generator's local ports.
#[derive(Debug, Clone, Default)]
pub struct Conns {
    gateway_port: u16,
    local_ports: HashSet<u16>,
}

/// Unread bytes summed over the run's connections, per side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unread {
    /// In the generator's receive queues.
    pub generator: u64,
    /// In the gateway's receive queues; `None` when its sockets are not in this machine's tables
    /// (a gateway elsewhere).
    pub gateway: Option<u64>,
}

impl Conns {
    /// `pairs`: each connection's local and peer (gateway) address.
    pub fn new(pairs: impl IntoIterator<Item = (SocketAddr, SocketAddr)>) -> Conns {
        let mut c = Conns::default();
        for (local, peer) in pairs {
            c.gateway_port = peer.port();
            c.local_ports.insert(local.port());
        }
        c
    }

    /// Reads the tables now; `None` if neither can be read (not Linux, no `/proc`).
    pub fn sample(&self) -> Option<Unread> {
        if self.local_ports.is_empty() {
            return None;
        }
        let mut total: Option<Unread> = None;
        for path in TABLES {
            if let Ok(text) = std::fs::read_to_string(path) {
                let u = self.parse(&text);
                let t = total.get_or_insert_with(Unread::default);
                t.generator += u.generator;
                t.gateway = match (t.gateway, u.gateway) {
                    (None, g) | (g, None) => g,
                    (Some(a), Some(b)) => Some(a + b),
                };
            }
        }
        total
    }

    /// Sums `rx_queue` over one table's established sockets of these connections.
    pub fn parse(&self, table: &str) -> Unread {
        let mut u = Unread::default();
        for line in table.lines().skip(1) {
            let mut f = line.split_whitespace();
            let (Some(_sl), Some(local), Some(remote), Some(st), Some(queues)) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            if st != ESTABLISHED {
                continue;
            }
            let (Some(local), Some(remote), Some(rx)) = (
                port(local),
                port(remote),
                queues
                    .split_once(':')
                    .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok()),
            ) else {
                continue;
            };
            if remote == self.gateway_port && self.local_ports.contains(&local) {
                u.generator += rx;
            } else if local == self.gateway_port && self.local_ports.contains(&remote) {
                *u.gateway.get_or_insert(0) += rx;
            }
        }
        u
    }
}

/// The port of an `ADDRESS:PORT` column (both hexadecimal).
fn port(column: &str) -> Option<u16> {
    let (_, p) = column.rsplit_once(':')?;
    u16::from_str_radix(p, 16).ok()
}

/// Milliseconds a backlog of `unread` bytes represents at `input_bytes_per_s`; `None` without
/// input (nothing arrived that second, so no rate to divide by).
pub fn backlog_ms(unread: u64, input_bytes_per_s: u64) -> Option<f64> {
    (input_bytes_per_s > 0).then(|| unread as f64 * 1000.0 / input_bytes_per_s as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn conns() -> Conns {
        // Generator ports 0xA000 and 0xA001 talking to a gateway on 8080 (0x1F90).
        Conns::new([
            (
                "127.0.0.1:40960".parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap(),
            ),
            (
                "127.0.0.1:40961".parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap(),
            ),
        ])
    }

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:A000 0100007F:1F90 01 00000000:00000100 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:A001 0100007F:1F90 01 00000010:00000001 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:A000 01 00000000:00000020 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
   4: 0100007F:1F90 0100007F:B000 01 00000000:00009999 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1
   5: 0100007F:A001 0100007F:4A38 01 00000000:00007777 00:00000000 00000000     0        0 6 1 0 20 4 30 10 -1
   6: 0100007F:A000 0100007F:1F90 06 00000000:00005555 00:00000000 00000000     0        0 7 1 0 20 4 30 10 -1
";

    #[test]
    fn sums_each_side_of_our_connections_only() {
        // Lines 1 and 2 are ours on the generator's side (0x100 + 0x1), line 3 the gateway's
        // side of one of them. Skipped: the listener (0), another client's connection (4), our
        // port to another service (5), a socket not established (6).
        assert_eq!(
            conns().parse(TABLE),
            Unread {
                generator: 0x101,
                gateway: Some(0x20)
            }
        );
    }

    #[test]
    fn a_gateway_elsewhere_has_no_side_here() {
        let only_ours: String = TABLE
            .lines()
            .filter(|l| !l.contains("0100007F:1F90 0100007F"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(conns().parse(&only_ours).gateway, None);
        assert_eq!(
            conns().parse("garbage\nmore garbage 1 2 3 4\n"),
            Unread::default()
        );
    }

    #[test]
    fn backlog_in_ms_of_input() {
        assert_eq!(backlog_ms(50_000, 1_000_000), Some(50.0));
        assert_eq!(backlog_ms(10, 0), None);
    }

    /// The kernel's own table, read for a real connection: bytes written and not read show up on
    /// the reading side, and reading them empties it.
    #[test]
    fn reads_the_kernels_receive_queues() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gateway_addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(gateway_addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let conns = Conns::new([(client.local_addr().unwrap(), gateway_addr)]);

        client.write_all(&[7u8; 3000]).unwrap();
        server.write_all(&[9u8; 1234]).unwrap();
        // Loopback delivers on write; poll briefly all the same rather than assume it.
        let mut seen = Unread::default();
        for _ in 0..100 {
            seen = conns.sample().expect("/proc/net/tcp is readable on Linux");
            if seen.generator == 1234 && seen.gateway == Some(3000) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            seen,
            Unread {
                generator: 1234,
                gateway: Some(3000)
            }
        );

        let mut buf = [0u8; 4096];
        let mut got = 0;
        while got < 1234 {
            got += std::io::Read::read(&mut client, &mut buf).unwrap();
        }
        assert_eq!(conns.sample().unwrap().generator, 0);
    }
}
