//! A [`Plan`] sent to the kernel as nf_tables netlink messages: one batch (one
//! transaction) per plan, over a socket kept open for the daemon's life.
//!
//! `nft -f` parses text and, before every change, fetches the ruleset it needs to resolve
//! names: with 10,000 services that fetch alone costs ~200 ms, and a change to one service
//! pays it. Encoding here costs microseconds and the kernel resolves names itself, so an
//! update costs the same at any number of services.
//!
//! Each rule is encoded as the expressions nft 1.0.6 generates for the same text (see
//! `nft --debug=netlink`), and sets carry the same user data, so `nft list table ip
//! sandboxd` reads back identically whichever backend programmed it (tested).

use std::io;
use std::path::Path;

use crate::netlink::{
    align, attributes, ip_octets, Encoder, Family, Socket, NETLINK_NETFILTER, NLA_F_NESTED,
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};

use crate::service::plan::{ChainType, Hook, Key, MapKey, Op, Plan, Rule, Verdict, TABLE};
use crate::service::Protocol;

// linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFPROTO_BRIDGE: u8 = 7;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;
/// NFT_DATA_VERDICT: the data type of a verdict map.
const VERDICT_DATA_TYPE: u32 = 0xffff_ff00;

// nft's datatypes (src/datatype.h), as set key types; a concatenation packs them 6 bits
// apart.
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_IFNAME: u32 = 41;
// nft's set user data (libnftnl udata): key and data byte order.
const UDATA_KEYBYTEORDER: u8 = 0;
const UDATA_DATABYTEORDER: u8 = 1;
const BYTEORDER_INVALID: u32 = 0;
const BYTEORDER_HOST: u32 = 1;
const BYTEORDER_BIG_ENDIAN: u32 = 2;

// Registers: 0 the verdict, 1 and 2 the 16-byte ones, 8.. the 4-byte ones (a
// concatenation's parts go to consecutive 4-byte registers).
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG_2: u32 = 2;
const REG32_01: u32 = 9;
const REG32_02: u32 = 10;
/// After an IPv6 address in register 1 (4-byte registers 8 to 11).
const REG32_04: u32 = 12;
const REG32_05: u32 = 13;

const PAYLOAD_LL: u32 = 0;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const META_MARK: u32 = 3;
const META_IIFNAME: u32 = 6;
const META_L4PROTO: u32 = 16;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const CT_STATE: u32 = 0;
const CT_STATE_NEW: u32 = 1 << 3;
const FIB_RESULT_ADDRTYPE: u32 = 3;
const FIB_F_DADDR: u32 = 2;
const RTN_LOCAL: u32 = 2;
const NUMGEN_RANDOM: u32 = 1;
const DYNSET_OP_UPDATE: u32 = 1;
const NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
const REJECT_ICMP_UNREACH: u32 = 0;
const ICMP_PORT_UNREACH: u8 = 3;

/// The family of an nf_tables table: `ip`, `ip6` (an address family's) or `bridge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFamily {
    Ip,
    Ip6,
    Bridge,
}

impl From<Family> for TableFamily {
    fn from(family: Family) -> TableFamily {
        match family {
            Family::V4 => TableFamily::Ip,
            Family::V6 => TableFamily::Ip6,
        }
    }
}

impl TableFamily {
    fn nfproto(self) -> u8 {
        match self {
            TableFamily::Ip => NFPROTO_IPV4,
            TableFamily::Ip6 => NFPROTO_IPV6,
            TableFamily::Bridge => NFPROTO_BRIDGE,
        }
    }
}

/// A netlink socket to nf_tables in one network namespace.
pub struct NftSocket(Socket);

impl NftSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<NftSocket> {
        Socket::open(NETLINK_NETFILTER).map(NftSocket)
    }

    /// Opens a socket in the network namespace at `netns` (None: the caller's); the
    /// socket stays bound to that namespace.
    pub fn open_in(netns: Option<&Path>) -> io::Result<NftSocket> {
        Socket::open_in(netns, NETLINK_NETFILTER).map(NftSocket)
    }

    /// Applies the plan to the service proxy's table (`ip sandboxd`) as one transaction:
    /// all of it, or (on an error) none of it.
    pub fn apply(&mut self, plan: &Plan) -> anyhow::Result<()> {
        self.apply_to(Family::V4, TABLE, plan)
    }

    /// The names of the chains of the table `<family> <table>`, none if there is no such
    /// table.
    pub fn chains(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
    ) -> anyhow::Result<Vec<String>> {
        let mut request = Encoder::new(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN,
            NLM_F_DUMP,
            &[family.into().nfproto(), 0, 0, 0],
        );
        request.str(NFTA_CHAIN_TABLE, table);
        let replies = match self.0.dump(request) {
            Ok(replies) => replies,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => anyhow::bail!("list the chains of table {table}: {e}"),
        };
        let text = |value: &[u8]| {
            String::from_utf8_lossy(value.split(|b| *b == 0).next().unwrap_or(&[])).into_owned()
        };
        let mut names = Vec::new();
        for payload in replies {
            // After the 4-byte nfgenmsg: the chain's attributes.
            let (mut in_table, mut name) = (false, None);
            for (attr, value) in attributes(payload.get(4..).unwrap_or(&[])) {
                match attr {
                    NFTA_CHAIN_TABLE => in_table = text(value) == table,
                    NFTA_CHAIN_NAME => name = Some(text(value)),
                    _ => {}
                }
            }
            if let (true, Some(name)) = (in_table, name) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Applies the plan to the table `<family> <table>`, as one transaction. Rules and
    /// keys without an address of their own (a destination map, a map's key type) take
    /// the table's family.
    pub fn apply_to(
        &mut self,
        family: impl Into<TableFamily>,
        table: &'static str,
        plan: &Plan,
    ) -> anyhow::Result<()> {
        if plan.ops.is_empty() {
            return Ok(());
        }
        let batch = Batch::encode(plan, family.into(), table, self.0.next_seq());
        self.0.continue_at(batch.seq);
        self.0
            .send(&batch.buf)
            .map_err(|e| anyhow::anyhow!("send the nf_tables batch: {e}"))?;
        // The kernel runs a batch inside sendmsg(): every reply is queued by now.
        let replies = self
            .0
            .drain_acks()
            .map_err(|e| anyhow::anyhow!("read the nf_tables replies: {e}"))?;
        let mut acknowledged = false;
        for reply in replies {
            if reply.errno == 0 {
                acknowledged |= reply.seq == batch.acked_seq;
                continue;
            }
            let op = batch
                .origin
                .iter()
                .find(|(seq, _)| *seq == reply.seq)
                .map(|(_, index)| plan.ops[*index].to_string())
                .unwrap_or_else(|| format!("message {}", reply.seq));
            let reason = io::Error::from_raw_os_error(reply.errno);
            let detail = reply.message.map(|m| format!(" ({m})")).unwrap_or_default();
            anyhow::bail!("nf_tables refused `{op}`: {reason}{detail}");
        }
        if !acknowledged {
            anyhow::bail!("nf_tables did not acknowledge the batch");
        }
        Ok(())
    }
}

/// Where a network header holds its source and destination addresses.
fn address_offsets(family: Family) -> (u32, u32) {
    match family {
        Family::V4 => (12, 16),
        Family::V6 => (8, 24),
    }
}

/// An address masked to `prefix`, and the mask, as bytes in network order.
fn masked(net: &std::net::IpAddr, prefix: u8) -> (Vec<u8>, Vec<u8>) {
    let octets = ip_octets(net);
    let bits = usize::from(prefix).min(octets.len() * 8);
    let mask: Vec<u8> = (0..octets.len())
        .map(|i| {
            let covered = bits.saturating_sub(i * 8).min(8);
            (0xffu16 << (8 - covered)) as u8
        })
        .collect();
    let value = octets.iter().zip(&mask).map(|(b, m)| b & m).collect();
    (value, mask)
}

/// A batch being encoded: the bytes, and which operation each message's sequence number
/// came from (for error messages).
struct Batch {
    /// The table every message names, and its family.
    table: &'static str,
    family: TableFamily,
    buf: Vec<u8>,
    seq: u32,
    origin: Vec<(u32, usize)>,
    /// The one message that asks for an acknowledgement.
    acked_seq: u32,
    next_set_id: u32,
}

fn verdict_code(v: &Verdict) -> (i32, Option<&str>) {
    match v {
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(chain) => (NFT_JUMP, Some(chain)),
        Verdict::Goto(chain) => (NFT_GOTO, Some(chain)),
    }
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    }
}

/// A map key as the kernel compares it: each part of a concatenation padded to 4 bytes,
/// addresses and ports in network order.
fn key_bytes(key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    let mut part = |bytes: &[u8]| {
        out.extend_from_slice(bytes);
        out.resize(align(out.len()), 0);
    };
    match key {
        Key::Service(ip, protocol, port) => {
            part(&ip_octets(ip));
            part(&[protocol_number(*protocol)]);
            part(&port.to_be_bytes());
        }
        Key::NodePort(protocol, port) => {
            part(&[protocol_number(*protocol)]);
            part(&port.to_be_bytes());
        }
        Key::Interface(name) => part(name),
    }
    out
}

impl Batch {
    fn encode(plan: &Plan, family: TableFamily, table: &'static str, first_seq: u32) -> Batch {
        let mut batch = Batch {
            table,
            family,
            buf: Vec::with_capacity(plan.ops.len() * 160),
            seq: first_seq,
            origin: Vec::new(),
            acked_seq: 0,
            next_set_id: 1,
        };
        batch.control(NFNL_MSG_BATCH_BEGIN);
        let last = plan.ops.len() - 1;
        for (index, op) in plan.ops.iter().enumerate() {
            // Only the last message asks for an acknowledgement: errors come regardless,
            // and 100,000 acknowledgements would only fill the receive buffer.
            let ack = if index == last { NLM_F_ACK } else { 0 };
            batch.op(op, index, ack);
        }
        batch.control(NFNL_MSG_BATCH_END);
        batch
    }

    /// A batch delimiter: family unspecified, resource id = the nf_tables subsystem.
    fn control(&mut self, msg_type: u16) {
        let start = self.header(msg_type, NLM_F_REQUEST, 0);
        let at = start + 16 + 2;
        self.buf[at..at + 2].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        self.finish(start);
    }

    /// nlmsghdr + nfgenmsg; returns where the message starts.
    fn header(&mut self, msg_type: u16, flags: u16, family: u8) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&msg_type.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&[family, 0, 0, 0]);
        self.seq = self.seq.wrapping_add(1);
        start
    }

    fn message(&mut self, msg: u16, flags: u16, index: usize) -> usize {
        self.origin.push((self.seq, index));
        if flags & NLM_F_ACK != 0 {
            self.acked_seq = self.seq;
        }
        self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | flags,
            self.family.nfproto(),
        )
    }

    fn finish(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, attr_type: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&attr_type.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(align(self.buf.len()), 0);
    }

    fn str(&mut self, attr_type: u16, s: &str) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.buf[start + 2..start + 4].copy_from_slice(&attr_type.to_ne_bytes());
        self.buf.resize(align(self.buf.len()), 0);
    }

    fn be32(&mut self, attr_type: u16, v: u32) {
        self.attr(attr_type, &v.to_be_bytes());
    }

    fn nested(&mut self, attr_type: u16, body: impl FnOnce(&mut Batch)) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(attr_type | NLA_F_NESTED).to_ne_bytes());
        body(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn op(&mut self, op: &Op, index: usize, ack: u16) {
        match op {
            Op::AddTable | Op::DeleteTable => {
                let (msg, flags) = if *op == Op::AddTable {
                    (NFT_MSG_NEWTABLE, NLM_F_CREATE)
                } else {
                    (NFT_MSG_DELTABLE, 0)
                };
                let start = self.message(msg, flags | ack, index);
                self.str(NFTA_TABLE_NAME, self.table);
                self.finish(start);
            }
            Op::AddMap { name, key } => {
                let (address_type, address_len) = match self.family {
                    TableFamily::Ip6 => (TYPE_IP6ADDR, 16),
                    TableFamily::Ip | TableFamily::Bridge => (TYPE_IPADDR, 4),
                };
                let (key_type, key_len) = match key {
                    MapKey::AddressProtocolPort => (
                        (address_type << 12) | (TYPE_INET_PROTOCOL << 6) | TYPE_INET_SERVICE,
                        address_len + 8,
                    ),
                    MapKey::ProtocolPort => ((TYPE_INET_PROTOCOL << 6) | TYPE_INET_SERVICE, 8),
                    MapKey::Interface => (TYPE_IFNAME, 16),
                };
                // nft records a string key in host order, anything else as "invalid".
                let key_order = match key {
                    MapKey::Interface => BYTEORDER_HOST,
                    _ => BYTEORDER_INVALID,
                };
                let start = self.message(NFT_MSG_NEWSET, NLM_F_CREATE | ack, index);
                self.str(NFTA_SET_TABLE, self.table);
                self.str(NFTA_SET_NAME, name);
                self.be32(NFTA_SET_FLAGS, NFT_SET_MAP);
                self.be32(NFTA_SET_KEY_TYPE, key_type);
                self.be32(NFTA_SET_KEY_LEN, key_len);
                self.be32(NFTA_SET_DATA_TYPE, VERDICT_DATA_TYPE);
                self.be32(NFTA_SET_DATA_LEN, 0);
                let id = self.set_id();
                self.be32(NFTA_SET_ID, id);
                self.set_userdata(key_order, Some(BYTEORDER_INVALID));
                self.finish(start);
            }
            Op::AddAffinitySet {
                name,
                timeout_seconds,
            } => {
                let start = self.message(NFT_MSG_NEWSET, NLM_F_CREATE | ack, index);
                self.str(NFTA_SET_TABLE, self.table);
                self.str(NFTA_SET_NAME, name);
                self.be32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL);
                self.be32(NFTA_SET_KEY_TYPE, TYPE_IPADDR);
                self.be32(NFTA_SET_KEY_LEN, 4);
                let id = self.set_id();
                self.be32(NFTA_SET_ID, id);
                let millis = u64::from(*timeout_seconds) * 1000;
                self.attr(NFTA_SET_TIMEOUT, &millis.to_be_bytes());
                self.set_userdata(BYTEORDER_BIG_ENDIAN, None);
                self.finish(start);
            }
            Op::DeleteSet(name) => {
                let start = self.message(NFT_MSG_DELSET, ack, index);
                self.str(NFTA_SET_TABLE, self.table);
                self.str(NFTA_SET_NAME, name);
                self.finish(start);
            }
            Op::AddChain { name, base } => {
                let start = self.message(NFT_MSG_NEWCHAIN, NLM_F_CREATE | ack, index);
                self.str(NFTA_CHAIN_TABLE, self.table);
                self.str(NFTA_CHAIN_NAME, name);
                if let Some(base) = base {
                    let hook = match base.hook {
                        Hook::Prerouting => libc::NF_INET_PRE_ROUTING,
                        Hook::Input => libc::NF_INET_LOCAL_IN,
                        Hook::Forward => libc::NF_INET_FORWARD,
                        Hook::Output => libc::NF_INET_LOCAL_OUT,
                        Hook::Postrouting => libc::NF_INET_POST_ROUTING,
                    };
                    self.nested(NFTA_CHAIN_HOOK, |b| {
                        b.be32(NFTA_HOOK_HOOKNUM, hook as u32);
                        b.be32(NFTA_HOOK_PRIORITY, base.priority as u32);
                    });
                    self.be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32);
                    let chain_type = match base.chain_type {
                        ChainType::Nat => "nat",
                        ChainType::Filter => "filter",
                    };
                    self.str(NFTA_CHAIN_TYPE, chain_type);
                }
                self.finish(start);
            }
            Op::FlushChain(name) => {
                let start = self.message(NFT_MSG_DELRULE, ack, index);
                self.str(NFTA_RULE_TABLE, self.table);
                self.str(NFTA_RULE_CHAIN, name);
                self.finish(start);
            }
            Op::DeleteChain(name) => {
                let start = self.message(NFT_MSG_DELCHAIN, ack, index);
                self.str(NFTA_CHAIN_TABLE, self.table);
                self.str(NFTA_CHAIN_NAME, name);
                self.finish(start);
            }
            Op::AddRule { chain, rule } => self.rule(chain, rule, index, ack),
            Op::AddElement { map, key, verdict } => {
                let start = self.message(NFT_MSG_NEWSETELEM, NLM_F_CREATE | ack, index);
                self.str(NFTA_SET_ELEM_LIST_TABLE, self.table);
                self.str(NFTA_SET_ELEM_LIST_SET, map);
                self.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                    b.element(&key_bytes(key), Some(verdict));
                });
                self.finish(start);
            }
            Op::ClaimElement { map, key, verdict } => {
                let start =
                    self.message(NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL | ack, index);
                self.str(NFTA_SET_ELEM_LIST_TABLE, self.table);
                self.str(NFTA_SET_ELEM_LIST_SET, map);
                self.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                    b.element(&key_bytes(key), Some(verdict));
                });
                self.finish(start);
            }
            Op::DeleteElement { map, key } => {
                let start = self.message(NFT_MSG_DELSETELEM, ack, index);
                self.str(NFTA_SET_ELEM_LIST_TABLE, self.table);
                self.str(NFTA_SET_ELEM_LIST_SET, map);
                self.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                    b.element(&key_bytes(key), None);
                });
                self.finish(start);
            }
        }
    }

    fn set_id(&mut self) -> u32 {
        let id = self.next_set_id;
        self.next_set_id += 1;
        id
    }

    /// The byte orders nft records for a set, so it prints keys and data as it would its
    /// own.
    fn set_userdata(&mut self, key: u32, data: Option<u32>) {
        let mut udata = Vec::with_capacity(12);
        for (udata_type, value) in [(UDATA_KEYBYTEORDER, Some(key)), (UDATA_DATABYTEORDER, data)] {
            if let Some(value) = value {
                udata.extend_from_slice(&[udata_type, 4]);
                udata.extend_from_slice(&value.to_ne_bytes());
            }
        }
        self.attr(NFTA_SET_USERDATA, &udata);
    }

    fn element(&mut self, key: &[u8], verdict: Option<&Verdict>) {
        self.nested(NFTA_LIST_ELEM, |b| {
            b.nested(NFTA_SET_ELEM_KEY, |b| b.attr(NFTA_DATA_VALUE, key));
            if let Some(verdict) = verdict {
                b.nested(NFTA_SET_ELEM_DATA, |b| b.verdict(verdict));
            }
        });
    }

    fn verdict(&mut self, verdict: &Verdict) {
        let (code, chain) = verdict_code(verdict);
        self.nested(NFTA_DATA_VERDICT, |b| {
            b.be32(NFTA_VERDICT_CODE, code as u32);
            if let Some(chain) = chain {
                b.str(NFTA_VERDICT_CHAIN, chain);
            }
        });
    }

    fn rule(&mut self, chain: &str, rule: &Rule, index: usize, ack: u16) {
        // An anonymous map (numgen's) goes first in the batch, as nft sends it.
        let anonymous = match rule {
            Rule::RandomGoto(chains) => Some(self.anonymous_verdict_map(chain, chains, index)),
            _ => None,
        };
        let start = self.message(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND | ack, index);
        self.str(NFTA_RULE_TABLE, self.table);
        self.str(NFTA_RULE_CHAIN, chain);
        self.nested(NFTA_RULE_EXPRESSIONS, |b| b.expressions(rule, anonymous));
        self.finish(start);
    }

    /// `{ 0 : goto c0, 1 : goto c1, … }`: an anonymous constant map keyed on integers.
    ///
    /// Named after its rule's chain (which has one such rule) rather than nft's `__map%d`:
    /// for a template the kernel scans every set of the table to pick a number, which makes
    /// a full sync quadratic. The old map of the chain is gone by the time a new one is
    /// made (flushing a chain releases its anonymous maps), so the name is free.
    fn anonymous_verdict_map(
        &mut self,
        rule_chain: &str,
        chains: &[String],
        index: usize,
    ) -> (u32, String) {
        let id = self.set_id();
        let start = self.message(NFT_MSG_NEWSET, NLM_F_CREATE, index);
        self.str(NFTA_SET_TABLE, self.table);
        let name = format!("__map-{rule_chain}");
        self.str(NFTA_SET_NAME, &name);
        self.be32(
            NFTA_SET_FLAGS,
            NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP,
        );
        self.be32(NFTA_SET_KEY_TYPE, TYPE_INTEGER);
        self.be32(NFTA_SET_KEY_LEN, 4);
        self.be32(NFTA_SET_DATA_TYPE, VERDICT_DATA_TYPE);
        self.be32(NFTA_SET_DATA_LEN, 0);
        self.be32(NFTA_SET_ID, id);
        self.nested(NFTA_SET_DESC, |b| {
            b.be32(NFTA_SET_DESC_SIZE, chains.len() as u32)
        });
        self.set_userdata(BYTEORDER_HOST, Some(BYTEORDER_INVALID));
        self.finish(start);

        let start = self.message(NFT_MSG_NEWSETELEM, NLM_F_CREATE, index);
        self.str(NFTA_SET_ELEM_LIST_TABLE, self.table);
        self.str(NFTA_SET_ELEM_LIST_SET, &name);
        self.be32(NFTA_SET_ELEM_LIST_SET_ID, id);
        self.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
            for (i, chain) in chains.iter().enumerate() {
                b.element(
                    &(i as u32).to_ne_bytes(),
                    Some(&Verdict::Goto(chain.clone())),
                );
            }
        });
        self.finish(start);
        (id, name)
    }

    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Batch)) {
        self.nested(NFTA_LIST_ELEM, |b| {
            b.str(NFTA_EXPR_NAME, name);
            b.nested(NFTA_EXPR_DATA, data);
        });
    }

    fn data(&mut self, attr_type: u16, value: &[u8]) {
        self.nested(attr_type, |b| b.attr(NFTA_DATA_VALUE, value));
    }

    fn payload(&mut self, dreg: u32, base: u32, offset: u32, len: u32) {
        self.expr("payload", |b| {
            b.be32(1, dreg); // NFTA_PAYLOAD_DREG
            b.be32(2, base); // NFTA_PAYLOAD_BASE
            b.be32(3, offset); // NFTA_PAYLOAD_OFFSET
            b.be32(4, len); // NFTA_PAYLOAD_LEN
        });
    }

    fn meta_load(&mut self, dreg: u32, key: u32) {
        self.expr("meta", |b| {
            b.be32(2, key); // NFTA_META_KEY
            b.be32(1, dreg); // NFTA_META_DREG
        });
    }

    fn meta_set(&mut self, key: u32, sreg: u32) {
        self.expr("meta", |b| {
            b.be32(2, key); // NFTA_META_KEY
            b.be32(3, sreg); // NFTA_META_SREG
        });
    }

    fn cmp(&mut self, sreg: u32, op: u32, value: &[u8]) {
        self.expr("cmp", |b| {
            b.be32(1, sreg); // NFTA_CMP_SREG
            b.be32(2, op); // NFTA_CMP_OP
            b.data(3, value); // NFTA_CMP_DATA
        });
    }

    fn bitwise(&mut self, reg: u32, mask: &[u8], xor: &[u8]) {
        self.expr("bitwise", |b| {
            b.be32(1, reg); // NFTA_BITWISE_SREG
            b.be32(2, reg); // NFTA_BITWISE_DREG
            b.be32(3, mask.len() as u32); // NFTA_BITWISE_LEN
            b.data(4, mask); // NFTA_BITWISE_MASK
            b.data(5, xor); // NFTA_BITWISE_XOR
        });
    }

    fn immediate_verdict(&mut self, verdict: &Verdict) {
        self.expr("immediate", |b| {
            b.be32(1, REG_VERDICT); // NFTA_IMMEDIATE_DREG
            b.nested(2, |b| b.verdict(verdict)); // NFTA_IMMEDIATE_DATA
        });
    }

    fn immediate_value(&mut self, dreg: u32, value: &[u8]) {
        self.expr("immediate", |b| {
            b.be32(1, dreg); // NFTA_IMMEDIATE_DREG
            b.data(2, value); // NFTA_IMMEDIATE_DATA
        });
    }

    /// `lookup`: a set membership test, or with `verdict_map` a verdict map's jump.
    fn lookup(&mut self, sreg: u32, set: &str, set_id: Option<u32>, verdict_map: bool) {
        self.expr("lookup", |b| {
            b.be32(2, sreg); // NFTA_LOOKUP_SREG
            b.str(1, set); // NFTA_LOOKUP_SET
            if let Some(id) = set_id {
                b.be32(4, id); // NFTA_LOOKUP_SET_ID
            }
            if verdict_map {
                b.be32(3, REG_VERDICT); // NFTA_LOOKUP_DREG
            }
        });
    }

    /// `l4proto . th dport` into consecutive registers from `first`, then the map.
    fn protocol_port_vmap(&mut self, first: u32, map: &str) {
        self.meta_load(first, META_L4PROTO);
        let next = if first == REG_1 { REG32_01 } else { first + 1 };
        self.payload(next, PAYLOAD_TRANSPORT, 2, 2);
        self.lookup(REG_1, map, None, true);
    }

    fn source_address(&mut self, bytes: u32) {
        self.payload(REG_1, PAYLOAD_NETWORK, 12, bytes);
    }

    fn mark_update(&mut self, mask: u32, xor: u32) {
        self.meta_load(REG_1, META_MARK);
        self.bitwise(REG_1, &mask.to_ne_bytes(), &xor.to_ne_bytes());
        self.meta_set(META_MARK, REG_1);
    }

    /// `numgen random mod N` into register 1.
    fn random(&mut self, modulus: u32) {
        self.expr("numgen", |b| {
            b.be32(1, REG_1); // NFTA_NG_DREG
            b.be32(2, modulus); // NFTA_NG_MODULUS
            b.be32(3, NUMGEN_RANDOM); // NFTA_NG_TYPE
            b.be32(4, 0); // NFTA_NG_OFFSET
        });
    }

    fn expressions(&mut self, rule: &Rule, anonymous_map: Option<(u32, String)>) {
        match rule {
            Rule::SetMark(bits) => self.mark_update(!bits, *bits),
            Rule::ToggleMark(bits) => self.mark_update(u32::MAX, *bits),
            Rule::ReturnUnlessMarked(bits) => {
                self.meta_load(REG_1, META_MARK);
                self.bitwise(REG_1, &bits.to_ne_bytes(), &0u32.to_ne_bytes());
                self.cmp(REG_1, CMP_EQ, &0u32.to_ne_bytes());
                self.immediate_verdict(&Verdict::Return);
            }
            Rule::MasqueradeFullyRandom => self.expr("masq", |b| {
                b.be32(1, NF_NAT_RANGE_PROTO_RANDOM_FULLY); // NFTA_MASQ_FLAGS
            }),
            Rule::DestinationVmap(map) => {
                // The IPv4 header's daddr is at 16, IPv6's at 24; the protocol and port
                // go to the 4-byte registers after the address.
                let (protocol, port) = if self.family == TableFamily::Ip6 {
                    self.payload(REG_1, PAYLOAD_NETWORK, 24, 16);
                    (REG32_04, REG32_05)
                } else {
                    self.payload(REG_1, PAYLOAD_NETWORK, 16, 4);
                    (REG32_01, REG32_02)
                };
                self.meta_load(protocol, META_L4PROTO);
                self.payload(port, PAYLOAD_TRANSPORT, 2, 2);
                self.lookup(REG_1, map, None, true);
            }
            Rule::LocalPortVmap(map) => {
                self.expr("fib", |b| {
                    b.be32(1, REG_1); // NFTA_FIB_DREG
                    b.be32(2, FIB_RESULT_ADDRTYPE); // NFTA_FIB_RESULT
                    b.be32(3, FIB_F_DADDR); // NFTA_FIB_FLAGS
                });
                self.cmp(REG_1, CMP_EQ, &RTN_LOCAL.to_ne_bytes());
                // `ip daddr != 127.0.0.0/8`: nft loads just the prefix's byte.
                self.payload(REG_1, PAYLOAD_NETWORK, 16, 1);
                self.cmp(REG_1, CMP_NEQ, &[127]);
                self.protocol_port_vmap(REG_1, map);
            }
            Rule::AnyLocalPortVmap(map) => {
                self.expr("fib", |b| {
                    b.be32(1, REG_1); // NFTA_FIB_DREG
                    b.be32(2, FIB_RESULT_ADDRTYPE); // NFTA_FIB_RESULT
                    b.be32(3, FIB_F_DADDR); // NFTA_FIB_FLAGS
                });
                self.cmp(REG_1, CMP_EQ, &RTN_LOCAL.to_ne_bytes());
                self.protocol_port_vmap(REG_1, map);
            }
            Rule::Always(verdict) => self.immediate_verdict(verdict),
            Rule::InterfaceVmap(map) => {
                self.meta_load(REG_1, META_IIFNAME);
                self.lookup(REG_1, map, None, true);
            }
            Rule::FromMac(mac, verdict) => {
                // The Ethernet header's source address is at 6.
                self.payload(REG_1, PAYLOAD_LL, 6, 6);
                self.cmp(REG_1, CMP_EQ, mac);
                self.immediate_verdict(verdict);
            }
            Rule::Reject => self.expr("reject", |b| {
                b.be32(1, REJECT_ICMP_UNREACH); // NFTA_REJECT_TYPE
                b.attr(2, &[ICMP_PORT_UNREACH]); // NFTA_REJECT_ICMP_CODE
            }),
            Rule::NewConnection(verdict) => {
                self.expr("ct", |b| {
                    b.be32(2, CT_STATE); // NFTA_CT_KEY
                    b.be32(1, REG_1); // NFTA_CT_DREG
                });
                self.bitwise(REG_1, &CT_STATE_NEW.to_ne_bytes(), &0u32.to_ne_bytes());
                self.cmp(REG_1, CMP_NEQ, &0u32.to_ne_bytes());
                self.immediate_verdict(verdict);
            }
            Rule::FromAddress(ip, verdict) => {
                let (offset, _) = address_offsets(Family::of(ip));
                let octets = ip_octets(ip);
                self.payload(REG_1, PAYLOAD_NETWORK, offset, octets.len() as u32);
                self.cmp(REG_1, CMP_EQ, &octets);
                self.immediate_verdict(verdict);
            }
            Rule::FromOutside((net, prefix), verdict)
            | Rule::FromNetwork((net, prefix), verdict)
            | Rule::ToNetwork((net, prefix), verdict) => {
                let op = if matches!(rule, Rule::FromOutside(..)) {
                    CMP_NEQ
                } else {
                    CMP_EQ
                };
                let (source, destination) = address_offsets(Family::of(net));
                let offset = if matches!(rule, Rule::ToNetwork(..)) {
                    destination
                } else {
                    source
                };
                // As nft: a whole-byte prefix loads just those bytes; any other loads the
                // address and masks it.
                let (value, mask) = masked(net, *prefix);
                let prefix = usize::from(*prefix).min(value.len() * 8);
                if prefix % 8 == 0 {
                    let bytes = (prefix / 8).max(1);
                    self.payload(REG_1, PAYLOAD_NETWORK, offset, bytes as u32);
                    self.cmp(REG_1, op, &value[..bytes]);
                } else {
                    self.payload(REG_1, PAYLOAD_NETWORK, offset, value.len() as u32);
                    self.bitwise(REG_1, &mask, &vec![0; mask.len()]);
                    self.cmp(REG_1, op, &value);
                }
                self.immediate_verdict(verdict);
            }
            Rule::RememberSource(set) => {
                self.source_address(4);
                self.expr("dynset", |b| {
                    b.be32(4, REG_1); // NFTA_DYNSET_SREG_KEY
                    b.be32(3, DYNSET_OP_UPDATE); // NFTA_DYNSET_OP
                    b.str(1, set); // NFTA_DYNSET_SET_NAME
                });
            }
            Rule::FromRemembered(set, verdict) => {
                self.source_address(4);
                self.lookup(REG_1, set, None, false);
                self.immediate_verdict(verdict);
            }
            Rule::Dnat(protocol, to) => {
                self.meta_load(REG_1, META_L4PROTO);
                self.cmp(REG_1, CMP_EQ, &[protocol_number(*protocol)]);
                self.immediate_value(REG_1, &ip_octets(&to.ip()));
                self.immediate_value(REG_2, &to.port().to_be_bytes());
                let family = TableFamily::from(Family::of(&to.ip())).nfproto();
                self.expr("nat", |b| {
                    b.be32(1, NAT_DNAT); // NFTA_NAT_TYPE
                    b.be32(2, u32::from(family)); // NFTA_NAT_FAMILY
                    b.be32(3, REG_1); // NFTA_NAT_REG_ADDR_MIN
                    b.be32(5, REG_2); // NFTA_NAT_REG_PROTO_MIN
                    b.be32(7, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_NAT_FLAGS
                });
            }
            Rule::OneIn(n, verdict) => {
                self.random(*n);
                self.cmp(REG_1, CMP_EQ, &0u32.to_ne_bytes());
                self.immediate_verdict(verdict);
            }
            Rule::RandomGoto(chains) => {
                self.random(chains.len() as u32);
                let (id, name) = anonymous_map.expect("numgen rules come with their map");
                self.lookup(REG_1, &name, Some(id), true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_mask_whole_and_partial_bytes_of_either_family() {
        let v4: std::net::IpAddr = "10.247.1.2".parse().unwrap();
        assert_eq!(masked(&v4, 12), (vec![10, 240, 0, 0], vec![255, 240, 0, 0]));
        assert_eq!(masked(&v4, 32).0, vec![10, 247, 1, 2]);
        let v6: std::net::IpAddr = "fd00:10:244:1::2".parse().unwrap();
        let (value, mask) = masked(&v6, 60);
        assert_eq!(mask[..8], [255, 255, 255, 255, 255, 255, 255, 240]);
        assert!(mask[8..].iter().all(|b| *b == 0));
        assert_eq!(value[..8], [0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 0]);
        assert_eq!(address_offsets(Family::V6), (8, 24));
    }
}
