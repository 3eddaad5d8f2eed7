//! A UDP relay on loopback that delays every datagram both ways, so a 0-RTT request sent
//! with the client's first flight is certainly read before the handshake completes (as in
//! the loopback tests' `DelayRelay`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// Forwards datagrams between one client and `target`, `one_way` late each way. Stopped
/// on drop.
pub struct DelayRelay {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayRelay {
    pub async fn start(target: SocketAddr, one_way: Duration) -> anyhow::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        back.connect(target).await?;
        let addr = front.local_addr()?;
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let task = tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        if let Ok(mut c) = client.lock() {
                            *c = Some(from);
                        }
                        let (back, datagram) = (back.clone(), up[..n].to_vec());
                        tokio::spawn(async move {
                            tokio::time::sleep(one_way).await;
                            let _ = back.send(&datagram).await;
                        });
                    }
                    Ok(n) = back.recv(&mut down) => {
                        let Some(to) = client.lock().ok().and_then(|c| *c) else { continue };
                        let (front, datagram) = (front.clone(), down[..n].to_vec());
                        tokio::spawn(async move {
                            tokio::time::sleep(one_way).await;
                            let _ = front.send_to(&datagram, to).await;
                        });
                    }
                }
            }
        });
        Ok(Self { addr, task })
    }
}
