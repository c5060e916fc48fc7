//! Round trips for every socket option on real loopback sockets: set it, read
//! it back from the kernel with getsockopt, and check it differs from what an
//! unconfigured socket reports. Linux only: the TIME_WAIT check reads the kernel's
//! socket table through the test kit's census (feature `testing`), the backlog check
//! `ss`.
#![cfg(target_os = "linux")]

use std::error::Error as _;
use std::io;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use conn_hygiene::options::SocketOptionError;
use conn_hygiene::{SocketOptions, options::bind};
use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A connected loopback pair, both ends without any option applied.
async fn pair() -> (TcpStream, TcpStream) {
    let listener = bind(loopback(0), SocketOptions::new()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

/// Applies `options` to a fresh connected stream; returns it with an
/// unconfigured stream for the defaults.
async fn configured(options: &SocketOptions) -> (TcpStream, TcpStream) {
    let (configured, plain) = pair().await;
    options.apply_to_stream(&configured).unwrap();
    (configured, plain)
}

#[tokio::test]
async fn nodelay_round_trip() {
    let (stream, plain) = configured(&SocketOptions::new().nodelay(true)).await;
    let default = SockRef::from(&plain).tcp_nodelay().unwrap();
    let set = SockRef::from(&stream).tcp_nodelay().unwrap();
    assert!(set);
    assert_ne!(set, default);
}

#[tokio::test]
async fn keepalive_round_trip() {
    let options = SocketOptions::new()
        .keepalive_time(Duration::from_secs(37))
        .keepalive_interval(Duration::from_secs(11))
        .keepalive_retries(4);
    let (stream, plain) = configured(&options).await;
    let (set, default) = (SockRef::from(&stream), SockRef::from(&plain));

    assert!(set.keepalive().unwrap());
    assert!(!default.keepalive().unwrap());

    let time = set.tcp_keepalive_time().unwrap();
    assert_eq!(time, Duration::from_secs(37));
    assert_ne!(time, default.tcp_keepalive_time().unwrap());

    let interval = set.tcp_keepalive_interval().unwrap();
    assert_eq!(interval, Duration::from_secs(11));
    assert_ne!(interval, default.tcp_keepalive_interval().unwrap());

    let retries = set.tcp_keepalive_retries().unwrap();
    assert_eq!(retries, 4);
    assert_ne!(retries, default.tcp_keepalive_retries().unwrap());
}

#[tokio::test]
async fn keepalive_parameters_compose_in_any_order() {
    // Setting the interval first must not lose it when the time comes later.
    let options = SocketOptions::new()
        .keepalive_retries(3)
        .keepalive_interval(Duration::from_secs(13))
        .keepalive_time(Duration::from_secs(41));
    let (stream, _plain) = configured(&options).await;
    let set = SockRef::from(&stream);
    assert_eq!(set.tcp_keepalive_time().unwrap(), Duration::from_secs(41));
    assert_eq!(
        set.tcp_keepalive_interval().unwrap(),
        Duration::from_secs(13)
    );
    assert_eq!(set.tcp_keepalive_retries().unwrap(), 3);
}

#[tokio::test]
async fn user_timeout_round_trip() {
    let timeout = Duration::from_millis(1234);
    let (stream, plain) = configured(&SocketOptions::new().tcp_user_timeout(timeout)).await;
    let default = SockRef::from(&plain).tcp_user_timeout().unwrap();
    let set = SockRef::from(&stream).tcp_user_timeout().unwrap();
    assert_eq!(set, Some(timeout));
    assert_ne!(set, default);
}

#[tokio::test]
async fn buffer_sizes_round_trip_on_streams() {
    const SEND: usize = 300_000;
    const RECV: usize = 310_000;
    let options = SocketOptions::new()
        .send_buffer_size(SEND)
        .recv_buffer_size(RECV);
    let (stream, plain) = configured(&options).await;
    let (set, default) = (SockRef::from(&stream), SockRef::from(&plain));

    // Linux doubles the request (after clamping it to wmem_max/rmem_max).
    let send = set.send_buffer_size().unwrap();
    assert!(send >= SEND, "SO_SNDBUF {send} < {SEND}");
    assert_ne!(send, default.send_buffer_size().unwrap());

    let recv = set.recv_buffer_size().unwrap();
    assert!(recv >= RECV, "SO_RCVBUF {recv} < {RECV}");
    assert_ne!(recv, default.recv_buffer_size().unwrap());
}

#[tokio::test]
async fn buffer_sizes_are_set_on_the_listener_and_inherited() {
    const RECV: usize = 320_000;
    const SEND: usize = 330_000;
    let options = SocketOptions::new()
        .recv_buffer_size(RECV)
        .send_buffer_size(SEND);
    let listener = bind(loopback(0), options).unwrap();
    let plain = bind(loopback(0), SocketOptions::new()).unwrap();

    let (set, default) = (SockRef::from(&listener), SockRef::from(&plain));
    assert!(set.recv_buffer_size().unwrap() >= RECV);
    assert_ne!(
        set.recv_buffer_size().unwrap(),
        default.recv_buffer_size().unwrap()
    );
    assert!(set.send_buffer_size().unwrap() >= SEND);
    assert_ne!(
        set.send_buffer_size().unwrap(),
        default.send_buffer_size().unwrap()
    );

    // Accepted sockets inherit the listener's sizes on Linux, before any
    // `apply_to_stream`.
    let addr = listener.local_addr().unwrap();
    let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (accepted, _) = accepted.unwrap();
    assert!(SockRef::from(&accepted).recv_buffer_size().unwrap() >= RECV);
    assert!(SockRef::from(&accepted).send_buffer_size().unwrap() >= SEND);
}

#[tokio::test]
async fn reuse_address_round_trip() {
    let on = bind(loopback(0), SocketOptions::new()).unwrap();
    let off = bind(loopback(0), SocketOptions::new().reuse_address(false)).unwrap();
    // What a socket reports before anyone sets it.
    let fresh = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();

    assert!(SockRef::from(&on).reuse_address().unwrap());
    assert!(!SockRef::from(&off).reuse_address().unwrap());
    assert!(!fresh.reuse_address().unwrap());
}

#[tokio::test]
async fn reuse_port_round_trip() {
    let on = bind(loopback(0), SocketOptions::new().reuse_port(true)).unwrap();
    let off = bind(loopback(0), SocketOptions::new()).unwrap();
    assert!(SockRef::from(&on).reuse_port().unwrap());
    assert!(!SockRef::from(&off).reuse_port().unwrap());
}

/// The listen backlog as the kernel holds it (`sk_max_ack_backlog`). No
/// getsockopt returns it; `ss` reads it over inet_diag and shows it as the
/// Send-Q of a LISTEN socket.
fn kernel_backlog(listener: &TcpListener) -> u32 {
    let port = listener.local_addr().unwrap().port();
    let output = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("`ss` (iproute2) is needed to read the listen backlog from the kernel");
    assert!(output.status.success(), "ss failed: {output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let line = stdout
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no LISTEN socket on port {port}"));
    // State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn backlog_round_trip() {
    let set = bind(loopback(0), SocketOptions::new().backlog(7)).unwrap();
    let default = bind(loopback(0), SocketOptions::new()).unwrap();

    assert_eq!(kernel_backlog(&set), 7);
    // The default, 1024, as clamped by net.core.somaxconn.
    let default = kernel_backlog(&default);
    assert_eq!(default, 1024.min(somaxconn()));
    assert_ne!(default, 7);
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn reuse_address_rebinds_over_time_wait() {
    use conn_hygiene::census::TcpState;
    use conn_hygiene::testing::{Side, port_census, wait_for_census};
    use tokio::io::AsyncReadExt;

    let time_wait = |census: &conn_hygiene::census::Census| census.get(TcpState::TimeWait) > 0;
    let listener = bind(loopback(0), SocketOptions::new()).unwrap();
    let addr = listener.local_addr().unwrap();

    // The server closes first, so its side of the connection (local port =
    // the listening port) ends in TIME_WAIT once the client closes too.
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let mut client = client.unwrap();
    drop(accepted.unwrap().0);
    assert_eq!(
        client.read(&mut [0; 1]).await.unwrap(),
        0,
        "expected the server's FIN"
    );
    drop(client);
    drop(listener);

    if let Err(census) =
        wait_for_census(addr.port(), Side::Local, Duration::from_secs(5), time_wait).await
    {
        panic!("no TIME_WAIT socket on port {}:\n{census}", addr.port());
    }

    // Contrast: without SO_REUSEADDR the TIME_WAIT socket blocks the port.
    let plain = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let err = plain.bind(&addr.into()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    drop(plain);

    // With the defaults (SO_REUSEADDR on) the restart binds at once.
    assert!(time_wait(&port_census(addr.port(), Side::Local).unwrap()));
    let restarted = bind(addr, SocketOptions::new()).unwrap();
    assert_eq!(restarted.local_addr().unwrap(), addr);
}

#[tokio::test]
async fn reuse_port_lets_two_listeners_share_a_port() {
    let shared = SocketOptions::new().reuse_port(true);
    let first = bind(loopback(0), shared).unwrap();
    let addr = first.local_addr().unwrap();
    let second = bind(addr, shared).unwrap();
    assert_eq!(second.local_addr().unwrap(), addr);

    // Without it (SO_REUSEADDR alone does not allow two listeners).
    let first = bind(loopback(0), SocketOptions::new()).unwrap();
    let err = bind(first.local_addr().unwrap(), SocketOptions::new()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
}

#[tokio::test]
async fn unset_options_are_left_alone() {
    let (stream, _plain) = pair().await;
    let sock = SockRef::from(&stream);
    sock.set_tcp_nodelay(true).unwrap();
    sock.set_keepalive(true).unwrap();
    SocketOptions::new().apply_to_stream(&stream).unwrap();
    assert!(sock.tcp_nodelay().unwrap());
    assert!(sock.keepalive().unwrap());
}

#[tokio::test]
async fn required_option_failure_names_the_option() {
    // TCP_NODELAY on a UDP socket: the kernel answers ENOPROTOOPT.
    let udp = std::net::UdpSocket::bind(loopback(0)).unwrap();
    let err = SocketOptions::new()
        .nodelay(true)
        .apply_to_socket(SockRef::from(&udp))
        .unwrap_err();
    assert_eq!(err.option(), "TCP_NODELAY");
    assert_eq!(err.to_string(), "failed to set TCP_NODELAY");
    let source = err.source().unwrap().downcast_ref::<io::Error>().unwrap();
    assert_eq!(source.raw_os_error(), Some(92), "{source}"); // ENOPROTOOPT

    let io: io::Error = err.into();
    assert_eq!(io.to_string(), "failed to set TCP_NODELAY");
    assert_eq!(
        io.get_ref()
            .unwrap()
            .downcast_ref::<SocketOptionError>()
            .unwrap()
            .option(),
        "TCP_NODELAY"
    );
}

/// Every value the kernel would refuse, and every fraction it would truncate, fails
/// validation naming the option and the builder method.
#[test]
fn values_the_kernel_refuses_fail_validation_naming_the_field() {
    let secs = Duration::from_secs;
    let ms = Duration::from_millis;
    let o = SocketOptions::new;
    let cases = [
        (
            o().keepalive_time(ms(500)),
            "TCP_KEEPIDLE",
            "keepalive_time",
        ),
        (
            o().keepalive_time(ms(1500)),
            "TCP_KEEPIDLE",
            "keepalive_time",
        ),
        (
            o().keepalive_time(Duration::ZERO),
            "TCP_KEEPIDLE",
            "keepalive_time",
        ),
        (
            o().keepalive_time(secs(32_768)),
            "TCP_KEEPIDLE",
            "keepalive_time",
        ),
        (
            o().keepalive_interval(ms(999)),
            "TCP_KEEPINTVL",
            "keepalive_interval",
        ),
        (
            o().keepalive_interval(secs(40_000)),
            "TCP_KEEPINTVL",
            "keepalive_interval",
        ),
        (o().keepalive_retries(0), "TCP_KEEPCNT", "keepalive_retries"),
        (
            o().keepalive_retries(128),
            "TCP_KEEPCNT",
            "keepalive_retries",
        ),
        (
            o().tcp_user_timeout(Duration::ZERO),
            "TCP_USER_TIMEOUT",
            "tcp_user_timeout",
        ),
        (
            o().tcp_user_timeout(Duration::from_micros(1500)),
            "TCP_USER_TIMEOUT",
            "tcp_user_timeout",
        ),
        (
            o().tcp_user_timeout(ms(1 << 31)),
            "TCP_USER_TIMEOUT",
            "tcp_user_timeout",
        ),
    ];
    for (options, option, method) in cases {
        let err = options.validate().unwrap_err();
        assert_eq!(err.option(), option, "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("invalid {option}: {method} ")),
            "{message}"
        );
        assert!(err.source().is_none());
        let io: io::Error = err.into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(io.to_string(), message);
    }
}

/// The limits themselves are accepted, by validation and by the kernel.
#[tokio::test]
async fn values_at_the_kernel_limits_are_set() {
    let options = SocketOptions::new()
        .keepalive_time(Duration::from_secs(32_767))
        .keepalive_interval(Duration::from_secs(1))
        .keepalive_retries(127)
        .tcp_user_timeout(Duration::from_millis(i32::MAX as u64));
    let (stream, _plain) = configured(&options).await;
    let sock = SockRef::from(&stream);
    assert_eq!(
        sock.tcp_keepalive_time().unwrap(),
        Duration::from_secs(32_767)
    );
    assert_eq!(
        sock.tcp_keepalive_interval().unwrap(),
        Duration::from_secs(1)
    );
    assert_eq!(sock.tcp_keepalive_retries().unwrap(), 127);
    assert_eq!(
        sock.tcp_user_timeout().unwrap(),
        Some(Duration::from_millis(i32::MAX as u64))
    );
    let low = SocketOptions::new()
        .keepalive_time(Duration::from_secs(1))
        .keepalive_interval(Duration::from_secs(32_767))
        .keepalive_retries(1)
        .tcp_user_timeout(Duration::from_millis(1));
    let (stream, _plain) = configured(&low).await;
    assert_eq!(SockRef::from(&stream).tcp_keepalive_retries().unwrap(), 1);
}

/// A keepalive time under a second used to bind fine and then close every accepted
/// connection with a warning. Now the listener fails to bind, naming the field.
#[tokio::test]
async fn invalid_options_fail_the_listener_not_each_connection() {
    let options = SocketOptions::new().keepalive_time(Duration::from_millis(500));
    let err = bind(loopback(0), options).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("keepalive_time"), "{err}");
    let option = err.get_ref().unwrap().downcast_ref::<SocketOptionError>();
    assert_eq!(option.unwrap().option(), "TCP_KEEPIDLE");

    let policy = conn_hygiene::Policy::default;
    let err = conn_hygiene::Listener::bind(loopback(0), options, policy()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    let tokio_listener = TcpListener::bind(loopback(0)).await.unwrap();
    let err = conn_hygiene::Listener::from_tokio(tokio_listener, options, policy()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");

    // Applying them fails too, before any system call.
    let (stream, _plain) = pair().await;
    let err = options.apply_to_stream(&stream).unwrap_err();
    assert_eq!(err.option(), "TCP_KEEPIDLE");
    assert!(
        !SockRef::from(&stream).keepalive().unwrap(),
        "keepalive left off"
    );
}

#[tokio::test]
async fn applied_to_accepted_streams() {
    let options = SocketOptions::new()
        .nodelay(true)
        .keepalive_time(Duration::from_secs(30));
    let listener = bind(loopback(0), options).unwrap();
    let addr = listener.local_addr().unwrap();
    let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (stream, _) = accepted.unwrap();
    options.apply_to_stream(&stream).unwrap();
    let sock = SockRef::from(&stream);
    assert!(sock.tcp_nodelay().unwrap());
    assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
}

#[test]
fn default_is_new() {
    assert_eq!(
        format!("{:?}", SocketOptions::default()),
        format!("{:?}", SocketOptions::new())
    );
}
