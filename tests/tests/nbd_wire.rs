//! Raw-socket probes of what libnbd will not send: unknown options and commands, unknown
//! client flags, oversized options and payloads, a broken request magic, the old
//! NBD_OPT_EXPORT_NAME path with and without NO_ZEROES, and deep pipelining with replies matched
//! by cookie. Each checks the bytes the server sends back and that the stream stays in sync.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use nandbox_tests::raw_nbd::{RawNbd, REP_ACK, REQ_MAGIC};
use nandbox_tests::{pseudo_random, Server};

const REP_SERVER: u32 = 2;
const ERR_UNSUP: u32 = (1 << 31) + 1;
const ERR_INVALID: u32 = (1 << 31) + 3;
const ERR_UNKNOWN: u32 = (1 << 31) + 6;
const ERR_TOO_BIG: u32 = (1 << 31) + 9;
const EINVAL: u32 = 22;

type Raw = RawNbd;

/// Asserts the server has closed the connection.
fn assert_closed(raw: &mut Raw) {
    assert!(
        raw.closed_within(Duration::from_secs(20)),
        "connection still open"
    );
}

#[test]
fn unknown_and_malformed_options_are_refused_and_haggling_continues() {
    let server = Server::start(&["--size", "16MiB"]);
    let mut c = Raw::greet(server.port(), 0b11);
    c.send_option(0xdead_beef, b"whatever data");
    assert_eq!(c.option_reply(0xdead_beef).0, ERR_UNSUP);
    c.send_option(4, &[]); // PEEK_EXPORT: withdrawn
    assert_eq!(c.option_reply(4).0, ERR_UNSUP);
    c.send_option(3, b"x"); // LIST must carry no data
    assert_eq!(c.option_reply(3).0, ERR_INVALID);
    c.send_option(3, &[]);
    let (kind, data) = c.option_reply(3);
    assert_eq!((kind, data), (REP_SERVER, vec![0, 0, 0, 0]));
    assert_eq!(c.option_reply(3).0, REP_ACK);
    c.send_option(6, &[0, 0, 0, 4, b'n', b'o', b'p', b'e', 0, 0]); // INFO, unknown name
    assert_eq!(c.option_reply(6).0, ERR_UNKNOWN);
    c.send_option(6, &[0, 0, 0, 9, b'x']); // INFO, name length beyond the data
    assert_eq!(c.option_reply(6).0, ERR_INVALID);
    c.send_option(10, &[0, 0, 0, 0, 0, 0, 0, 0]); // SET_META_CONTEXT before STRUCTURED_REPLY
    assert_eq!(c.option_reply(10).0, ERR_INVALID);
    c.send_option(8, b"x"); // STRUCTURED_REPLY with data
    assert_eq!(c.option_reply(8).0, ERR_INVALID);
    // An option claiming 1 MiB of data: drained, refused, and the stream stays in sync.
    c.send_option(9, &vec![7u8; 1 << 20]);
    assert_eq!(c.option_reply(9).0, ERR_TOO_BIG);
    let size = c.go(false);
    assert_eq!(size, 16 << 20);
    c.request(0, 0, 1, 0, 512, &[]);
    assert_eq!(c.simple(), (0, 1));
    assert_eq!(c.bytes(512), vec![0u8; 512]);
}

#[test]
fn unknown_client_flags_end_the_session() {
    let server = Server::start(&["--size", "16MiB"]);
    let mut c = Raw::greet(server.port(), 0b11 | 1 << 7);
    assert_closed(&mut c);
}

#[test]
fn export_name_path_sends_zeroes_unless_no_zeroes_and_drops_unknown_names() {
    let server = Server::start(&["--size", "16MiB", "--export", "disk"]);
    for (flags, tail) in [(0b01, 124), (0b11, 0)] {
        let mut c = Raw::greet(server.port(), flags);
        c.send_option(1, b"disk");
        let reply = c.bytes(10 + tail);
        assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 16 << 20);
        let tx = u16::from_be_bytes(reply[8..10].try_into().unwrap());
        assert_eq!(tx & 1, 1, "HAS_FLAGS");
        assert_eq!(tx & (1 << 8), 1 << 8, "CAN_MULTI_CONN");
        assert_eq!(tx & (1 << 7), 0, "no DF without structured replies");
        assert!(reply[10..].iter().all(|&b| b == 0));
        c.request(0, 3, 9, 0, 0, &[]); // FLUSH
        assert_eq!(c.simple(), (0, 9));
    }
    let mut c = Raw::greet(server.port(), 0b11);
    c.send_option(1, b"other");
    assert_closed(&mut c);
}

#[test]
fn unknown_commands_flags_and_oversized_payloads_get_einval_in_sync() {
    let server = Server::start(&["--size", "64MiB"]);
    let mut c = Raw::greet(server.port(), 0b11);
    c.go(false);
    c.request(0, 42, 1, 0, 512, &[]);
    assert_eq!(c.simple(), (EINVAL, 1));
    c.request(0, 5, 2, 0, 512, &[]); // CACHE: not advertised
    assert_eq!(c.simple(), (EINVAL, 2));
    c.request(1 << 15, 0, 3, 0, 512, &[]);
    assert_eq!(c.simple(), (EINVAL, 3));
    // A 33 MiB write: over the advertised maximum, refused, its payload skipped.
    let big = vec![0xabu8; (32 << 20) + 4096];
    c.request(0, 1, 4, 0, big.len() as u32, &big);
    assert_eq!(c.simple(), (EINVAL, 4));
    // A write past the end with a payload: ENOSPC, payload skipped too.
    c.request(0, 1, 5, 64 << 20, 4096, &[1u8; 4096]);
    assert_eq!(c.simple(), (28, 5));
    let data = pseudo_random(5, 4096);
    c.request(0, 1, 6, 4096, 4096, &data);
    assert_eq!(c.simple(), (0, 6));
    c.request(0, 0, 7, 0, 8192, &[]);
    assert_eq!(c.simple(), (0, 7));
    let back = c.bytes(8192);
    assert_eq!(
        &back[..4096],
        &[0u8; 4096][..],
        "the refused write must not have landed"
    );
    assert_eq!(&back[4096..], &data[..]);
}

#[test]
fn structured_errors_carry_a_message_and_reads_one_data_chunk() {
    let server = Server::start(&["--size", "16MiB"]);
    let mut c = Raw::greet(server.port(), 0b11);
    c.go(true);
    c.request(0, 0, 11, 16 << 20, 512, &[]);
    let (flags, kind, cookie, payload) = c.chunk();
    assert_eq!((flags & 1, kind, cookie), (1, (1 << 15) + 1, 11));
    assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), EINVAL);
    let msg_len = u16::from_be_bytes(payload[4..6].try_into().unwrap()) as usize;
    assert_eq!(payload.len(), 6 + msg_len);
    c.request(0, 1, 12, 512, 512, &[9u8; 512]);
    assert_eq!(c.simple(), (0, 12));
    c.request(0, 0, 13, 512, 512, &[]);
    let (flags, kind, cookie, payload) = c.chunk();
    assert_eq!((flags & 1, kind, cookie), (1, 1, 13));
    assert_eq!(u64::from_be_bytes(payload[..8].try_into().unwrap()), 512);
    assert_eq!(&payload[8..], &[9u8; 512][..]);
    // BLOCK_STATUS without a selected context: EINVAL.
    c.request(0, 7, 14, 0, 4096, &[]);
    let (_, kind, cookie, payload) = c.chunk();
    assert_eq!((kind, cookie), ((1 << 15) + 1, 14));
    assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), EINVAL);
}

#[test]
fn a_broken_request_drops_only_that_connection() {
    let server = Server::start(&["--size", "16MiB"]);
    let mut good = Raw::greet(server.port(), 0b11);
    good.go(false);
    let mut bad = Raw::greet(server.port(), 0b11);
    bad.go(false);
    bad.s.write_all(&[0x55u8; 28]).unwrap();
    assert_closed(&mut bad);
    good.request(0, 1, 1, 0, 4096, &[3u8; 4096]);
    assert_eq!(good.simple(), (0, 1));
    // A client that vanishes in the middle of a write payload loses nothing acknowledged.
    let mut gone = Raw::greet(server.port(), 0b11);
    gone.go(false);
    gone.request(0, 1, 1, 8192, 4096, &[1u8; 100]);
    drop(gone);
    good.request(0, 0, 2, 0, 4096, &[]);
    assert_eq!(good.simple(), (0, 2));
    assert_eq!(good.bytes(4096), vec![3u8; 4096]);
}

#[test]
fn many_requests_in_flight_are_answered_by_cookie() {
    let server = Server::start(&["--size", "64MiB"]);
    let mut c = Raw::greet(server.port(), 0b11);
    c.go(false);
    let n = 256u64;
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| pseudo_random(i + 100, 4096)).collect();
    // Write everything before reading any reply: the server must keep up without deadlock.
    let mut writer = c.s.try_clone().unwrap();
    let payloads = blocks.clone();
    let sender = std::thread::spawn(move || {
        for (i, b) in payloads.iter().enumerate() {
            let mut m = REQ_MAGIC.to_be_bytes().to_vec();
            m.extend_from_slice(&0u16.to_be_bytes());
            m.extend_from_slice(&1u16.to_be_bytes());
            m.extend_from_slice(&(1000 + i as u64).to_be_bytes());
            m.extend_from_slice(&(i as u64 * 4096 * 3).to_be_bytes());
            m.extend_from_slice(&4096u32.to_be_bytes());
            m.extend_from_slice(b);
            writer.write_all(&m).unwrap();
        }
    });
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let (err, cookie) = c.simple();
        assert_eq!(err, 0);
        assert!(
            (1000..1000 + n).contains(&cookie) && seen.insert(cookie),
            "cookie {cookie}"
        );
    }
    sender.join().unwrap();
    for i in 0..n {
        c.request(0, 0, 5000 + i, i * 4096 * 3, 4096, &[]);
    }
    let mut got = 0;
    while got < n {
        let (err, cookie) = c.simple();
        assert_eq!(err, 0);
        let i = cookie - 5000;
        assert_eq!(c.bytes(4096), blocks[i as usize], "read {i}");
        got += 1;
    }
}

#[test]
fn connections_over_the_limit_are_closed_and_the_rest_served() {
    let server = Server::start(&["--size", "16MiB", "--max-connections", "2"]);
    // The guard's own readiness probe held a slot for a moment: wait until both are free.
    let greeted = |port| {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut hello = [0u8; 18];
        (&s).read_exact(&mut hello).ok().map(|()| s)
    };
    let start = std::time::Instant::now();
    let (a, b) = loop {
        if let (Some(a), Some(b)) = (greeted(server.port()), greeted(server.port())) {
            break (a, b);
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "two slots never free"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut a, mut b) = (Raw { s: a }, Raw { s: b });
    a.s.write_all(&3u32.to_be_bytes()).unwrap();
    b.s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut over = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 18];
    assert!(
        matches!(over.read(&mut buf), Ok(0) | Err(_)),
        "third connection was greeted"
    );
    a.go(false);
    b.go(false);
    a.request(0, 3, 1, 0, 0, &[]);
    assert_eq!(a.simple(), (0, 1));
    drop(b);
    // A slot frees up once a connection ends.
    let start = std::time::Instant::now();
    loop {
        let mut c = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        if c.read(&mut buf).map(|n| n > 0).unwrap_or(false) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "slot never freed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn byte_granular_writes_and_whole_device_trims_and_zeroes() {
    // A client that did not ask for block sizes may use any alignment; the kernel sends trims
    // as large as the device.
    let server = Server::start(&["--size", "1GiB"]);
    let mut c = Raw::greet(server.port(), 0b11);
    c.go(false);
    c.request(0, 1, 1, 4096, 8192, &[7u8; 8192]);
    assert_eq!(c.simple(), (0, 1));
    c.request(0, 1, 2, 4097, 3, b"xyz");
    assert_eq!(c.simple(), (0, 2));
    c.request(0, 0, 3, 4095, 6, &[]);
    assert_eq!(c.simple(), (0, 3));
    assert_eq!(c.bytes(6), vec![0, 7, b'x', b'y', b'z', 7]);
    c.request(0, 4, 4, 0, 1 << 30, &[]); // TRIM 1 GiB
    assert_eq!(c.simple(), (0, 4));
    c.request(0, 0, 5, 4096, 8192, &[]);
    assert_eq!(c.simple(), (0, 5));
    assert_eq!(c.bytes(8192), vec![0u8; 8192]);
    c.request(0, 1, 6, (1 << 30) - 4096, 4096, &[9u8; 4096]);
    assert_eq!(c.simple(), (0, 6));
    c.request(1, 6, 7, 0, 1 << 30, &[]); // WRITE_ZEROES 1 GiB with FUA
    assert_eq!(c.simple(), (0, 7));
    c.request(0, 0, 8, (1 << 30) - 4096, 4096, &[]);
    assert_eq!(c.simple(), (0, 8));
    assert_eq!(c.bytes(4096), vec![0u8; 4096]);
}
