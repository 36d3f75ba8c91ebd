//! Which component is calling, without the caller sending anything: the client end of a
//! loopback connection is looked up in the kernel's socket table (`/proc/net/tcp`) and its
//! owner's process group is matched against the instances the runtime started. Done once per
//! connection; callers that are not instances (a shell, another program) are `external`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;

/// The caller of connections that no known instance made.
pub const EXTERNAL: &str = "external";
/// Connections the daemon itself makes (splitting traffic to another component): the caller
/// they carry in `x-yun-caller` is believed.
pub const TRUSTED: &str = "@daemon";

/// Instance process groups and the component each belongs to (`app/component`), kept by the
/// runtime as instances start and stop.
#[derive(Default)]
pub struct Callers {
    groups: RwLock<HashMap<u32, String>>,
}

impl Callers {
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
        let me = std::process::id();
        let trusted = TRUSTED.to_string();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let caller =
                if pid == me { Some(&trusted) } else { process_group(pid).and_then(|g| groups.get(&g)) };
            let Some(caller) = caller else { continue };
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                    return Some(caller.clone());
                }
            }
        }
        None
    }
}

/// The process group of `pid`, from `/proc/<pid>/stat`.
fn process_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state, ppid, pgrp, …
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(2)?.parse().ok()
}

/// The inode of the socket whose local end is `peer` and remote end `local`.
fn socket_inode(peer: SocketAddr, local: SocketAddr) -> Option<u64> {
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
        // The daemon's own connections are trusted to carry their caller.
        callers.insert(child.id(), "app/tests".into());
        let own = std::net::TcpStream::connect(local).unwrap();
        let (_s, own_peer) = listener.accept().unwrap();
        assert_eq!(own_peer, own.local_addr().unwrap());
        assert_eq!(callers.resolve(own_peer, local), TRUSTED);
        let _ = child.kill();
        let _ = child.wait();
    }
}
