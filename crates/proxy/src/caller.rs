//! Which component is calling, without the caller sending anything: the client end of a
//! loopback connection is looked up in the kernel's socket table and matched against the
//! processes of the instances the runtime started. Done once per
//! connection; callers that are not instances (a shell, another program) are `external`.
//! Only instance leaders and their descendants are looked at, so the cost does not grow with
//! the number of other processes on the machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;

/// The caller of connections that no known instance made.
pub const EXTERNAL: &str = "external";
/// Header with which the daemon vouches for the `x-yun-caller` of a request it passes on
/// (splits, routes): its value is a secret of this daemon, and it never reaches an instance.
pub const HOP_HEADER: &str = "x-yun-hop";

/// Instance process groups and the component each belongs to (`app/component`), kept by the
/// runtime as instances start and stop.
pub struct Callers {
    groups: RwLock<HashMap<u32, String>>,
    hop: String,
}

impl Default for Callers {
    fn default() -> Callers {
        let bytes: [u8; 16] = rand::random();
        Callers { groups: RwLock::default(), hop: bytes.iter().map(|b| format!("{b:02x}")).collect() }
    }
}

impl Callers {
    /// This daemon's secret for [`HOP_HEADER`].
    pub fn hop_token(&self) -> &str {
        &self.hop
    }

    /// Records that process group `pgid` is an instance of `app/component`.
    pub fn insert(&self, pgid: u32, caller: String) {
        if let Ok(mut g) = self.groups.write() {
            g.insert(pgid, caller);
        }
    }

    /// Forgets a process group.
    pub fn remove(&self, pgid: u32) {
        if let Ok(mut g) = self.groups.write() {
            g.remove(&pgid);
        }
    }

    /// The component that owns the client end (`peer`) of a connection accepted on `local`.
    /// Blocking (reads `/proc`): call it off the async workers.
    pub fn resolve(&self, peer: SocketAddr, local: SocketAddr) -> String {
        self.lookup(peer, local).unwrap_or_else(|| EXTERNAL.to_string())
    }

    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<String> {
        let groups = self.groups.read().ok()?.clone();
        if groups.is_empty() || !peer.ip().is_loopback() {
            return None;
        }
        let inode = socket_inode(peer, local)?;
        let target = format!("socket:[{inode}]");
        let owns = |pid: u32| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
            })
        };
        // Most calls come from an instance's main process, the leader of its group; the others
        // from its descendants. Only those processes are looked at, not every process.
        for (leader, caller) in &groups {
            let mut queue = std::collections::VecDeque::from([*leader]);
            let mut seen = 0;
            while let Some(pid) = queue.pop_front() {
                if owns(pid) {
                    return Some(caller.clone());
                }
                seen += 1;
                if seen > 256 {
                    break;
                }
                queue.extend(children(pid));
            }
        }
        None
    }
}

/// Child processes of `pid`, from `/proc/<pid>/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// The inode of the socket whose local end is `peer` and remote end `local`: one exact lookup
/// by the kernel (netlink sock_diag, as `ss` does), falling back to reading `/proc/net/tcp`,
/// which walks every TCP socket and takes milliseconds.
fn socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    sock_diag_inode(peer, local).or_else(|| proc_net_tcp_inode(peer, local))
}

/// `SOCK_DIAG_BY_FAMILY` request for one IPv4 TCP socket by its 4-tuple.
fn sock_diag_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    use nix::sys::socket::{AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
    use std::os::fd::AsRawFd;
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (peer, local) else { return None };
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    let mut req = Vec::with_capacity(72);
    req.extend_from_slice(&72u32.to_ne_bytes()); // nlmsghdr.len
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[2, 6, 0, 0]); // AF_INET, IPPROTO_TCP, no extensions, pad
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&src.port().to_be_bytes());
    req.extend_from_slice(&dst.port().to_be_bytes());
    req.extend_from_slice(&src.ip().octets());
    req.extend_from_slice(&[0; 12]);
    req.extend_from_slice(&dst.ip().octets());
    req.extend_from_slice(&[0; 12]);
    req.extend_from_slice(&0u32.to_ne_bytes()); // interface
    req.extend_from_slice(&[0xff; 8]); // no cookie
    let fd = nix::sys::socket::socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    nix::sys::socket::sendto(fd.as_raw_fd(), &req, &NetlinkAddr::new(0, 0), MsgFlags::empty()).ok()?;
    let mut buf = [0u8; 1024];
    let n = nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
    // nlmsghdr (16) then inet_diag_msg, whose inode is at offset 68.
    let msg_type = u16::from_ne_bytes([buf[4], buf[5]]);
    if n < 88 || msg_type != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    Some(u32::from_ne_bytes([buf[84], buf[85], buf[86], buf[87]]).into())
}

/// The same from `/proc/net/tcp`.
fn proc_net_tcp_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    let (file, want_local, want_remote) = match (peer, local) {
        (SocketAddr::V4(p), SocketAddr::V4(l)) => ("/proc/net/tcp", hex_v4(p), hex_v4(l)),
        _ => return None,
    };
    let table = std::fs::read_to_string(file).ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && f[1] == want_local && f[2] == want_remote).then(|| f[9].parse().ok()).flatten()
    })
}

/// `127.0.0.1:8080` as `/proc/net/tcp` writes it: the address as a native-endian word in hex,
/// the port in hex.
fn hex_v4(a: std::net::SocketAddrV4) -> String {
    format!("{:08X}:{:04X}", u32::from_ne_bytes(a.ip().octets()), a.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_diag_and_proc_agree() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_s, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let local = listener.local_addr().unwrap();
        let fast = sock_diag_inode(peer, local).expect("sock_diag answers");
        assert_eq!(Some(fast), proc_net_tcp_inode(peer, local));
    }

    #[test]
    fn finds_the_process_group_owning_a_client_socket() {
        use std::os::unix::process::CommandExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        // A caller in its own process group, holding a connection open.
        let mut child = std::process::Command::new("bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{}; sleep 30", local.port())])
            .process_group(0)
            .spawn()
            .unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let callers = Callers::default();
        assert_eq!(callers.resolve(peer, local), EXTERNAL, "nothing registered");
        callers.insert(child.id(), "app/tests".into());
        assert_eq!(callers.resolve(peer, local), "app/tests");
        callers.remove(child.id());
        assert_eq!(callers.resolve(peer, local), EXTERNAL);
        let _ = child.kill();
        let _ = child.wait();
    }
}
