//! The "directory": an LDAP-like upstream the demo service binds users against, and
//! the client the service uses to reach it.
//!
//! The protocol is one line each way: `BIND <user>\n`, answered `OK <dn>\n`. Like the
//! LDAP server of the Node.js write-up that reset idle connections, this one misbehaves,
//! in turns of [`TURN`] each: healthy, resetting connections, healthy, stalling (accepts
//! and never answers), down (its port closed). The service sees what real services see:
//! `ECONNRESET`, a timeout, `ECONNREFUSED`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// How long each mood lasts.
pub(crate) const TURN: Duration = Duration::from_secs(2);

/// How long the service waits for the directory's answer.
const BIND_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mood {
    Healthy,
    /// Reads the request, then resets the connection (`SO_LINGER` 0: an RST, not a FIN).
    Resetting,
    /// Reads the request and never answers.
    Stalling,
    /// The port is closed: connecting is refused.
    Down,
}

const TURNS: [Mood; 5] = [
    Mood::Healthy,
    Mood::Resetting,
    Mood::Healthy,
    Mood::Stalling,
    Mood::Down,
];

/// What one turn looks like, for the banner.
pub(crate) fn describe_turns() -> String {
    let moods: Vec<String> = TURNS
        .iter()
        .map(|m| format!("{m:?}").to_lowercase())
        .collect();
    format!("{} ({} s each)", moods.join(", "), TURN.as_secs())
}

/// Serves the directory on `listener`'s address until `stop` turns true.
pub(crate) async fn serve(listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let mut listener = Some(listener);
    let stop_answers = stop.clone();
    for mood in TURNS.iter().copied().cycle() {
        let turn_end = Instant::now() + TURN;
        if mood == Mood::Down {
            listener = None;
        } else if listener.is_none() {
            // Tokio sets SO_REUSEADDR: the port just closed can be bound again. If it
            // cannot, this turn is one more "down" turn.
            listener = TcpListener::bind(addr).await.ok();
        }
        loop {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                _ = sleep_until(turn_end) => break,
                accepted = accept(listener.as_ref()) => {
                    if let Ok((socket, _)) = accepted {
                        tokio::spawn(answer(socket, mood, stop_answers.clone()));
                    }
                }
            }
        }
    }
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn answer(socket: TcpStream, mood: Mood, mut stop: watch::Receiver<bool>) {
    let mut socket = BufReader::new(socket);
    let mut request = String::new();
    if timeout(Duration::from_secs(2), socket.read_line(&mut request))
        .await
        .is_err()
    {
        return;
    }
    let user = request
        .trim_end()
        .strip_prefix("BIND ")
        .unwrap_or("anonymous");
    match mood {
        Mood::Healthy | Mood::Down => {
            let dn = format!("OK uid={user},ou=people,dc=demo\n");
            let _ = socket.get_mut().write_all(dn.as_bytes()).await;
        }
        Mood::Resetting => {
            // Closing with a zero linger sends an RST: the client's read fails with
            // ECONNRESET, as with a server that drops idle connections.
            let _ = socket.get_ref().set_zero_linger();
        }
        Mood::Stalling => {
            tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => {}
                _ = sleep(BIND_TIMEOUT * 6) => {}
            }
        }
    }
}

/// Binds `user` at the directory: its distinguished name, or the I/O error on the way.
/// A directory that does not answer within 500 ms is an `io::ErrorKind::TimedOut`.
pub(crate) async fn bind(directory: SocketAddr, user: &str) -> io::Result<String> {
    let exchange = async {
        let mut socket = TcpStream::connect(directory).await?;
        socket
            .write_all(format!("BIND {user}\n").as_bytes())
            .await?;
        let mut line = String::new();
        BufReader::new(socket).read_line(&mut line).await?;
        match line.trim_end().strip_prefix("OK ") {
            Some(dn) => Ok(dn.to_owned()),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the directory closed the connection without answering",
            )),
        }
    };
    timeout(BIND_TIMEOUT, exchange).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the directory did not answer within {} ms",
                BIND_TIMEOUT.as_millis()
            ),
        ))
    })
}
