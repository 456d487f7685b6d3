//! A raw-socket NBD client for the probes libnbd will not send: it writes exactly the bytes a
//! test asks for and reads replies back field by field, checking each magic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// NBD_OPT option magic ("IHAVEOPT").
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of an option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQ_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const CHUNK_MAGIC: u32 = 0x668e_33ef;
/// NBD_REP_ACK.
pub const REP_ACK: u32 = 1;
/// NBD_REP_INFO.
pub const REP_INFO: u32 = 3;

const TIMEOUT: Duration = Duration::from_secs(30);

/// One connection to the server, past nothing but the TCP connect.
pub struct RawNbd {
    /// The socket, for tests that write or shut down by hand.
    pub s: TcpStream,
}

impl RawNbd {
    /// Connects, checks the fixed-newstyle greeting and sends `client_flags`.
    pub fn greet(port: u16, client_flags: u32) -> RawNbd {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut raw = RawNbd { s };
        let hello = raw.bytes(18);
        assert_eq!(&hello[..8], b"NBDMAGIC");
        assert_eq!(
            u64::from_be_bytes(hello[8..16].try_into().unwrap()),
            IHAVEOPT
        );
        let hflags = u16::from_be_bytes(hello[16..18].try_into().unwrap());
        assert_eq!(hflags, 0b11, "FIXED_NEWSTYLE | NO_ZEROES");
        raw.s.write_all(&client_flags.to_be_bytes()).unwrap();
        raw
    }

    /// Reads exactly `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).expect("read from server");
        b
    }

    /// Sends one option with its data.
    pub fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    /// Reads one option reply to `option`: (reply type, data).
    pub fn option_reply(&mut self, option: u32) -> (u32, Vec<u8>) {
        let h = self.bytes(20);
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().unwrap()),
            OPT_REPLY_MAGIC
        );
        assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), option);
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        (kind, self.bytes(len))
    }

    /// Sends NBD_OPT_STRUCTURED_REPLY (if asked) and NBD_OPT_GO for the default export;
    /// returns the export size.
    pub fn go(&mut self, structured: bool) -> u64 {
        if structured {
            self.send_option(8, &[]);
            assert_eq!(self.option_reply(8).0, REP_ACK);
        }
        self.send_option(7, &[0, 0, 0, 0, 0, 0]);
        let mut size = None;
        loop {
            let (kind, data) = self.option_reply(7);
            match kind {
                REP_INFO if data[..2] == [0, 0] => {
                    size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap()));
                }
                REP_INFO => {}
                REP_ACK => return size.expect("NBD_INFO_EXPORT before ACK"),
                other => panic!("GO failed with reply type {other:#x}"),
            }
        }
    }

    /// The 28-byte header of a request.
    pub fn header(flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut m = REQ_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m
    }

    /// Sends a request header and its payload.
    pub fn request(
        &mut self,
        flags: u16,
        kind: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        self.s
            .write_all(&Self::header(flags, kind, cookie, offset, len))
            .unwrap();
        self.s.write_all(payload).unwrap();
    }

    /// Reads a simple reply: (error, cookie).
    pub fn simple(&mut self) -> (u32, u64) {
        let h = self.bytes(16);
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), SIMPLE_MAGIC);
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        (err, u64::from_be_bytes(h[8..16].try_into().unwrap()))
    }

    /// Reads a structured chunk: (flags, type, cookie, payload).
    pub fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        let h = self.bytes(20);
        assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), CHUNK_MAGIC);
        let flags = u16::from_be_bytes(h[4..6].try_into().unwrap());
        let kind = u16::from_be_bytes(h[6..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        (flags, kind, cookie, self.bytes(len))
    }

    /// Whether the server closed the connection (EOF or reset) within `wait`.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.s.set_read_timeout(Some(wait)).unwrap();
        let mut b = [0u8; 1];
        let closed = match self.s.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        self.s.set_read_timeout(Some(TIMEOUT)).unwrap();
        closed
    }
}
