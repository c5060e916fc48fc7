use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: `command` 0 (LOCAL) or 1 (PROXY), TCP over the source's family, with
/// `tlvs` bytes of TLVs after the addresses.
fn v2(command: u8, source: SocketAddr, destination: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut addresses = Vec::new();
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addresses.extend(s.octets());
            addresses.extend(d.octets());
            0x11
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            addresses.extend(s.octets());
            addresses.extend(d.octets());
            0x21
        }
        _ => panic!("one family"),
    };
    addresses.extend(source.port().to_be_bytes());
    addresses.extend(destination.port().to_be_bytes());
    addresses.extend(tlvs);
    let mut header = V2_SIGNATURE.to_vec();
    header.push(0x20 | command);
    header.push(family);
    header.extend(u16::try_from(addresses.len()).unwrap().to_be_bytes());
    header.extend(addresses);
    header
}

fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn v1_headers_parse_to_their_source_and_length() {
    let header = v1(addr("192.0.2.7:51000"), addr("198.51.100.1:443"));
    let mut bytes = header.clone();
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
    assert_eq!(
        parse(&bytes),
        Parsed::Header {
            len: header.len(),
            source: Some(addr("192.0.2.7:51000"))
        }
    );
    let six = v1(addr("[2001:db8::7]:51000"), addr("[2001:db8::1]:443"));
    assert_eq!(
        parse(&six),
        Parsed::Header {
            len: six.len(),
            source: Some(addr("[2001:db8::7]:51000"))
        }
    );
    assert_eq!(
        parse(b"PROXY UNKNOWN\r\nGET"),
        Parsed::Header {
            len: 15,
            source: None
        }
    );
}

#[test]
fn v2_headers_parse_and_local_keeps_the_peer() {
    let header = v2(1, addr("192.0.2.7:51000"), addr("198.51.100.1:443"), &[]);
    let mut bytes = header.clone();
    bytes.extend_from_slice(b"PRI * HTTP/2.0");
    assert_eq!(
        parse(&bytes),
        Parsed::Header {
            len: header.len(),
            source: Some(addr("192.0.2.7:51000"))
        }
    );
    // A NOOP TLV of 3 bytes is skipped with the header.
    let tlv = v2(
        1,
        addr("[2001:db8::7]:1"),
        addr("[2001:db8::1]:2"),
        &[4, 0, 3, 1, 2, 3],
    );
    assert_eq!(
        parse(&tlv),
        Parsed::Header {
            len: 16 + 36 + 6,
            source: Some(addr("[2001:db8::7]:1"))
        }
    );
    // A dual-stack balancer's IPv4 client, IPv4-mapped: shown as a v1 header shows it.
    let mapped = v2(1, addr("[::ffff:192.0.2.7]:51000"), addr("[::1]:443"), &[]);
    assert_eq!(
        parse(&mapped),
        Parsed::Header {
            len: mapped.len(),
            source: Some(addr("192.0.2.7:51000"))
        }
    );
    let local = v2(0, addr("192.0.2.7:51000"), addr("198.51.100.1:443"), &[]);
    assert_eq!(
        parse(&local),
        Parsed::Header {
            len: local.len(),
            source: None
        }
    );
}

#[test]
fn beginnings_wait_and_garbage_is_malformed_at_once() {
    let header = v2(1, addr("192.0.2.7:51000"), addr("198.51.100.1:443"), &[]);
    for end in 0..header.len() {
        assert_eq!(parse(&header[..end]), Parsed::Incomplete, "v2 up to {end}");
    }
    let header = v1(addr("192.0.2.7:51000"), addr("198.51.100.1:443"));
    for end in 0..header.len() {
        assert_eq!(parse(&header[..end]), Parsed::Incomplete, "v1 up to {end}");
    }
    for garbage in [
        &b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
        b"PROXY TCP4 999.2.3.4 5.6.7.8 80 443\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\r\n\r\n\0\r\nQUIT\n\x30\x11\0\x0c",
        b"\r\n\r\n\0\r\nQUIT\n\x2f\x11\0\x0c",
    ] {
        assert_eq!(parse(garbage), Parsed::Malformed, "{garbage:?}");
    }
    // v1 is at most 107 bytes.
    let long = format!("PROXY TCP4 {}", "1".repeat(120));
    assert_eq!(parse(long.as_bytes()), Parsed::Malformed);
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| (Ipv4Addr::from(ip), port).into()),
        (any::<u128>(), any::<u16>()).prop_map(|(ip, port)| (Ipv6Addr::from(ip), port).into()),
    ]
}

proptest! {
    /// Whatever a peer sends, the parser answers without panicking, and a header is
    /// never longer than what it was parsed from.
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Parsed::Header { len, .. } = parse(&bytes) {
            prop_assert!(len <= bytes.len());
        }
    }

    /// Garbage behind a valid beginning (the signature, or `PROXY `) neither panics.
    #[test]
    fn garbage_after_a_signature_never_panics(
        v2_signature in any::<bool>(),
        tail in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = if v2_signature { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
        bytes.extend(tail);
        if let Parsed::Header { len, .. } = parse(&bytes) {
            prop_assert!(len <= bytes.len());
        }
    }

    /// Every valid encoding round-trips: its source and its exact length, whatever the
    /// client sends after it.
    #[test]
    fn valid_headers_round_trip(
        source in socket_addr(),
        port in any::<u16>(),
        text in any::<bool>(),
        tlvs in proptest::collection::vec(any::<u8>(), 0..40),
        after in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let destination = match source {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
        };
        // A NOOP TLV holding the random bytes.
        let mut noop = vec![4];
        noop.extend(u16::try_from(tlvs.len()).unwrap().to_be_bytes());
        noop.extend(&tlvs);
        let header = if text { v1(source, destination) } else { v2(1, source, destination, &noop) };
        let mut bytes = header.clone();
        bytes.extend(&after);
        prop_assert_eq!(parse(&bytes), Parsed::Header { len: header.len(), source: Some(source) });
        for end in 0..header.len() {
            prop_assert_eq!(parse(&header[..end]), Parsed::Incomplete);
        }
    }
}

/// A connected pair over loopback: (the server's socket, the client's).
async fn pair() -> (TcpStream, SocketAddr, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, peer) = listener.accept().await.unwrap();
    (server, peer, client)
}

#[tokio::test]
async fn the_header_is_read_exactly_and_the_first_bytes_stay() {
    let (server, peer, mut client) = pair().await;
    let mut sent = v2(1, addr("192.0.2.7:51000"), addr("127.0.0.1:80"), &[]);
    sent.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    // Split inside the header: the reader waits for the rest.
    client.write_all(&sent[..10]).await.unwrap();
    let reading = tokio::spawn(read_header(server, peer, Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.write_all(&sent[10..]).await.unwrap();
    let mut proxied = reading.await.unwrap().expect("a valid header");
    assert_eq!(proxied.client, addr("192.0.2.7:51000"));
    assert_eq!(proxied.balancer, peer);
    let mut first = [0u8; 18];
    proxied.socket.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"GET / HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn a_malformed_header_is_reset_at_once() {
    let (server, peer, mut client) = pair().await;
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        read_header(server, peer, Duration::from_secs(30))
            .await
            .is_none()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut buf = [0u8; 16];
    let read = client.read(&mut buf).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
        "the client sees a reset: {read:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_at_the_deadline() {
    let (server, peer, _client) = pair().await;
    let started = tokio::time::Instant::now();
    assert!(
        read_header(server, peer, Duration::from_secs(3))
            .await
            .is_none()
    );
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_half_header_is_closed_at_the_deadline() {
    let (server, peer, mut client) = pair().await;
    client.write_all(b"PROXY TCP4 192.0.2.7 ").await.unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        read_header(server, peer, Duration::from_secs(2))
            .await
            .is_none()
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[test]
fn bad_settings_fail_with_their_name() {
    let zero = ProxyProtocol::required().with_header_timeout(Duration::ZERO);
    let error = zero.validate().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("proxy_protocol.header_timeout"));
    let none = ProxyProtocol::from_trusted([]);
    assert!(
        none.validate()
            .unwrap_err()
            .to_string()
            .contains("proxy_protocol.trusted")
    );
    assert!(ProxyProtocol::required().validate().is_ok());
}

#[test]
fn only_trusted_peers_are_expected_to_send_a_header() {
    let trusted = ProxyProtocol::from_trusted(["10.0.0.0/24".parse().unwrap()]);
    assert!(trusted.expects_header(addr("10.0.0.9:1000")));
    assert!(trusted.expects_header(addr("[::ffff:10.0.0.9]:1000")));
    assert!(!trusted.expects_header(addr("10.0.1.9:1000")));
    assert!(ProxyProtocol::required().expects_header(addr("10.0.1.9:1000")));
}
