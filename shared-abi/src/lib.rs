//! The wire layout of the region a Vesper guest shares with its host.
//!
//! Everything that crosses the guest/host boundary is defined here once. The guest
//! module's C header (`guest-module/include/vesper_abi.h`) is generated from these
//! definitions by [`c_header`] (feature `c-header`), and a test fails when the committed
//! header drifts from them.
//!
//! Layout v1 of the region (all offsets fixed, so the host never trusts an offset it
//! read from shared memory):
//!
//! | offset | size | what | written by |
//! |---|---|---|---|
//! | [`HEADER_OFFSET`] | 4 KiB | [`RegionHeader`] | host (identity), guest (state, generation) |
//! | [`GRANT_TABLE_OFFSET`] | 4 KiB | [`GRANT_ENTRIES`] × [`GrantEntry`] | guest only |
//! | [`REQ_RING_OFFSET`] | 4 KiB + slots | guest→host request ring | guest (slots, producer), host (consumer) |
//! | [`RSP_RING_OFFSET`] | 4 KiB + slots | host→guest response ring | host (slots, producer), guest (consumer) |
//! | [`DATA_AREA_OFFSET`] | rest | grantable pages (module staging, module lists, relay buffers) | whoever the grant allows |
//!
//! The guest is always the requester (Xen/VESPER style): the host writes into the
//! response ring only to answer a request, and into the data area only where a live
//! grant marked writable says it may.
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "c-header")]
extern crate alloc;

#[cfg(feature = "c-header")]
mod header;
#[cfg(feature = "c-header")]
pub use header::c_header;

/// A C scalar or array type, for the header generator.
pub trait CType {
    /// The C element type (`uint32_t`, ...).
    const C_NAME: &'static str;
    /// Array length, or 0 for a scalar.
    const ARRAY_LEN: usize;
}

macro_rules! c_scalar {
    ($($t:ty => $c:literal),* $(,)?) => {
        $(impl CType for $t { const C_NAME: &'static str = $c; const ARRAY_LEN: usize = 0; })*
    };
}
c_scalar!(u8 => "uint8_t", u16 => "uint16_t", u32 => "uint32_t", u64 => "uint64_t",
          i32 => "int32_t", i64 => "int64_t");

impl<T: CType, const N: usize> CType for [T; N] {
    const C_NAME: &'static str = T::C_NAME;
    const ARRAY_LEN: usize = N;
}

/// One field of a wire struct as the header generator sees it.
#[derive(Debug, Clone, Copy)]
pub struct FieldInfo {
    /// Field name, identical in Rust and C.
    pub name: &'static str,
    /// C element type.
    pub c_type: &'static str,
    /// Array length, 0 for scalars.
    pub array_len: usize,
    /// Byte offset inside the struct.
    pub offset: usize,
}

/// A wire struct: its C name, size and fields.
pub trait WireStruct {
    /// Name of the C struct (`vesper_<snake_case>`).
    const C_NAME: &'static str;
    /// Doc line emitted above the C struct.
    const DOC: &'static str;
    /// Fields in declaration order.
    const FIELDS: &'static [FieldInfo];
    /// `size_of::<Self>()`.
    const SIZE: usize;
}

/// Defines `#[repr(C)]` wire structs, checks at compile time that they have no implicit
/// padding (the sum of field sizes equals the struct size), and records their fields
/// for the C header.
macro_rules! wire_structs {
    ($(
        $( #[doc = $doc:literal] )+
        c_name = $cname:literal;
        pub struct $name:ident { $( $( #[doc = $fdoc:literal] )+ pub $field:ident : $ty:ty ),* $(,)? }
    )*) => {
        $(
            $( #[doc = $doc] )+
            #[repr(C)]
            #[derive(Clone, Copy, Debug, PartialEq, Eq)]
            pub struct $name { $( $( #[doc = $fdoc] )+ pub $field: $ty ),* }

            impl WireStruct for $name {
                const C_NAME: &'static str = $cname;
                const DOC: &'static str = concat!($($doc, "\n"),+);
                const FIELDS: &'static [FieldInfo] = &[$(FieldInfo {
                    name: stringify!($field),
                    c_type: <$ty as CType>::C_NAME,
                    array_len: <$ty as CType>::ARRAY_LEN,
                    offset: core::mem::offset_of!($name, $field),
                }),*];
                const SIZE: usize = core::mem::size_of::<$name>();
            }

            // No implicit padding: every byte of the struct belongs to a named field.
            const _: () = assert!(
                0 $(+ core::mem::size_of::<$ty>())* == core::mem::size_of::<$name>(),
                concat!(stringify!($name), " has implicit padding")
            );

            impl Default for $name {
                fn default() -> Self {
                    // SAFETY: all fields are integers or integer arrays, for which the
                    // all-zero bit pattern is valid.
                    unsafe { core::mem::zeroed() }
                }
            }

            #[cfg(feature = "vm-memory")]
            // SAFETY: the struct is `repr(C)`, made only of integers and integer arrays
            // (any bit pattern is valid) and has no padding (asserted above).
            unsafe impl vm_memory::ByteValued for $name {}
        )*

        /// Every wire struct, for the header generator.
        #[cfg(feature = "c-header")]
        pub(crate) const ALL_STRUCTS: &[(&str, &str, &[FieldInfo], usize)] = &[
            $((<$name as WireStruct>::C_NAME, <$name as WireStruct>::DOC,
               <$name as WireStruct>::FIELDS, <$name as WireStruct>::SIZE)),*
        ];
    };
}

/// Defines ABI constants and records them for the C header as `#define`s.
macro_rules! abi_consts {
    ($( $( #[doc = $doc:literal] )+ pub const $name:ident : $ty:ty = $val:expr; )*) => {
        $( $( #[doc = $doc] )+ pub const $name: $ty = $val; )*

        /// Every ABI constant as (name, value, is_signed, doc), for the header generator.
        #[cfg(feature = "c-header")]
        pub(crate) const ALL_CONSTS: &[(&str, i128, &str)] = &[
            $((stringify!($name), $name as i128, concat!($($doc, "\n"),+))),*
        ];
    };
}

abi_consts! {
    /// Region magic, "VESPERv1" read as a little-endian u64; written by the host.
    pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"VESPERv1");
    /// Version of this layout. Bumped on any incompatible change.
    pub const ABI_VERSION: u32 = 1;
    /// Page size the layout is built on.
    pub const PAGE_SIZE: u64 = 4096;
    /// Smallest region the layout fits in.
    pub const MIN_REGION_SIZE: u64 = 2 << 20;
    /// Region size the host creates by default (ivshmem wants a power of two).
    pub const DEFAULT_REGION_SIZE: u64 = 8 << 20;
    /// Offset of [`RegionHeader`].
    pub const HEADER_OFFSET: u64 = 0;
    /// Offset of the grant table.
    pub const GRANT_TABLE_OFFSET: u64 = 0x1000;
    /// Number of grant entries.
    pub const GRANT_ENTRIES: u32 = 128;
    /// Offset of the request ring's [`RingControl`]; its slots follow one page later.
    pub const REQ_RING_OFFSET: u64 = 0x2000;
    /// Offset of the response ring's [`RingControl`]; its slots follow one page later.
    pub const RSP_RING_OFFSET: u64 = 0x13000;
    /// Slots per ring (a power of two).
    pub const RING_SLOTS: u32 = 16;
    /// Bytes per ring slot: a [`MsgHeader`] followed by the payload.
    pub const SLOT_SIZE: u32 = 4096;
    /// Payload bytes available in one slot.
    pub const SLOT_PAYLOAD_SIZE: u32 = 4096 - 32;
    /// Start of the grantable data area; grants below it are invalid.
    pub const DATA_AREA_OFFSET: u64 = 0x10_0000;

    /// Host feature bit: the host owns guest RAM and honours [`GRANT_GUEST_FRAMES`].
    pub const HOST_FEATURE_GUEST_FRAMES: u32 = 1;

    /// Host state: region initialised, backend listening.
    pub const HOST_STATE_READY: u32 = 1;
    /// Guest state: no frontend bound (initial zero).
    pub const GUEST_STATE_ABSENT: u32 = 0;
    /// Guest state: frontend bound and serving.
    pub const GUEST_STATE_UP: u32 = 1;
    /// Guest state: frontend unbound cleanly.
    pub const GUEST_STATE_DOWN: u32 = 2;

    /// Grant access bit: host may read.
    pub const GRANT_READ: u32 = 1;
    /// Grant access bit: host may write.
    pub const GRANT_WRITE: u32 = 2;
    /// Grant access bit: `offset` is a guest-physical address (page aligned) and `len` a
    /// multiple of [`PAGE_SIZE`] up to [`GRANT_FRAMES_MAX_LEN`]: the grant names guest RAM
    /// frames, not a region range. Only for hosts that offer
    /// [`HOST_FEATURE_GUEST_FRAMES`] (a VMM that owns guest RAM); others refuse it.
    pub const GRANT_GUEST_FRAMES: u32 = 4;
    /// Longest guest-frame grant: 4 MiB, the largest physically contiguous block the
    /// kernel's page allocator hands out (order 10).
    pub const GRANT_FRAMES_MAX_LEN: u32 = 4 << 20;
    /// Grant entry state: unused.
    pub const GRANT_STATE_FREE: u32 = 0;
    /// Grant entry state: live.
    pub const GRANT_STATE_ACTIVE: u32 = 1;
    /// Grant owner: module image staging (host writes one chunk).
    pub const GRANT_OWNER_STAGING: u32 = 1;
    /// Grant owner: module list produced for the host.
    pub const GRANT_OWNER_MODLIST: u32 = 2;
    /// Grant owner: relay channel buffers.
    pub const GRANT_OWNER_RELAY: u32 = 3;
    /// "No grant" value in grant-reference fields.
    pub const GRANT_REF_NONE: u32 = 0xffff_ffff;

    /// Request: the frontend announces itself ([`HelloRequest`]).
    pub const REQ_HELLO: u32 = 1;
    /// Request: the frontend waits for the next host command (answered by [`CommandResponse`]).
    pub const REQ_WAIT_COMMAND: u32 = 2;
    /// Request: write the next image chunk into a granted range ([`FetchChunkRequest`]).
    pub const REQ_FETCH_CHUNK: u32 = 3;
    /// Request: a command finished ([`CompletionRequest`]).
    pub const REQ_COMPLETION: u32 = 4;
    /// Request: a relay channel was opened; the host builds its view ([`RelayOpenRequest`]).
    pub const REQ_RELAY_OPEN: u32 = 5;
    /// Request: a relay channel is closing; the host drops its view ([`RelayCloseRequest`]).
    pub const REQ_RELAY_CLOSE: u32 = 6;
    /// Request: a command is about to enter a stage that may run long ([`ProgressRequest`]).
    /// The host answers 0 (go on: it now waits for that stage by the stage's own limit,
    /// not the step timeout) or a negative errno (`-ECANCELED`: it gave up on the
    /// command; the guest must not start the stage).
    pub const REQ_PROGRESS: u32 = 7;
    /// Bit set in a response's kind: response kind = request kind | this.
    pub const RSP_FLAG: u32 = 0x80;

    /// Command: load the module image that follows.
    pub const OP_LOAD: u32 = 1;
    /// Command: unload a module by name.
    pub const OP_UNLOAD: u32 = 2;
    /// Command: list the guest's modules into a granted range.
    pub const OP_LIST: u32 = 3;
    /// Command: return the tail of the kernel log.
    pub const OP_KMSG: u32 = 4;
    /// Command: answer at once; the completion's `guest_time_ns` lets the host map the
    /// guest's clock onto its own (NTP-style, from the round trip).
    pub const OP_CLOCK: u32 = 5;
    /// Unload flag: force (`O_TRUNC` to `delete_module`).
    pub const UNLOAD_FLAG_FORCE: u32 = 1;

    /// Completion stage: no failure.
    pub const STAGE_DONE: u32 = 0;
    /// Completion stage: failed while fetching the image.
    pub const STAGE_TRANSFER: u32 = 1;
    /// Completion stage: failed preparing the loader context (memory, symbols).
    pub const STAGE_PREPARE: u32 = 2;
    /// Completion stage: the kernel's init_module failed (module init or loader checks).
    pub const STAGE_INIT_MODULE: u32 = 3;
    /// Completion stage: the kernel's delete_module failed.
    pub const STAGE_DELETE_MODULE: u32 = 4;
    /// Completion stage: listing modules failed.
    pub const STAGE_LIST: u32 = 5;
    /// Completion stage: the command was malformed.
    pub const STAGE_COMMAND: u32 = 6;

    /// Module entry flag: this module was pushed by Vesper.
    pub const MODULE_FLAG_PUSHED: u32 = 1;
    /// Module entry flag: this module is the Vesper frontend itself.
    pub const MODULE_FLAG_FRONTEND: u32 = 2;

    /// Doorbell vector for control-ring requests.
    pub const VECTOR_CONTROL: u32 = 0;
    /// Doorbell vector for relay index updates (sub-buffer switches, urgent records).
    pub const VECTOR_RELAY: u32 = 1;

    /// Most CPUs a relay channel spans.
    pub const RELAY_MAX_CPUS: u32 = 64;
    /// Smallest sub-buffer.
    pub const RELAY_MIN_SUBBUF_SIZE: u32 = 4096;
    /// Largest sub-buffer.
    pub const RELAY_MAX_SUBBUF_SIZE: u32 = 1 << 20;
    /// Most sub-buffers per CPU buffer.
    pub const RELAY_MAX_SUBBUFS: u32 = 256;
    /// Size of a channel or module name field, NUL included.
    pub const RELAY_NAME_LEN: u32 = 64;
    /// Channel flag: overwrite the oldest sub-buffer when full (flight recorder);
    /// without it the writer drops new records when every sub-buffer is unconsumed.
    pub const RELAY_FLAG_OVERWRITE: u32 = 1;
    /// Record flag: notify the host at once instead of at the next sub-buffer switch.
    pub const RECORD_FLAG_URGENT: u16 = 1;
    /// Records start at multiples of this.
    pub const RECORD_ALIGN: u32 = 8;

    /// Record type: raw bytes (no decoder).
    pub const RECORD_RAW: u16 = 0;
    /// Record type: [`PanicRecord`].
    pub const RECORD_PANIC: u16 = 1;
    /// Record type: [`ExitRecord`].
    pub const RECORD_EXIT: u16 = 2;
    /// Record type: [`OomRecord`].
    pub const RECORD_OOM: u16 = 3;
    /// Record type: [`StressRecord`] (test fixture).
    pub const RECORD_STRESS: u16 = 4;
    /// Record type: a probe spec's record (`host/probespec`); its fields are described
    /// by the `vesper_record` modinfo entry of the module that wrote it.
    pub const RECORD_SPEC: u16 = 5;
    /// Largest payload of a `RECORD_SPEC` record (it is built on the kernel stack of a
    /// probe handler).
    pub const SPEC_RECORD_MAX: u32 = 256;

    /// Size of the text field of a panic record.
    pub const PANIC_MSG_LEN: u32 = 256;
    /// Size of a task command name field (`TASK_COMM_LEN` is 16).
    pub const COMM_LEN: u32 = 16;

    /// Size of the kernel-release field (utsname is 65).
    pub const KERNEL_RELEASE_LEN: u32 = 128;
    /// Size of the vermagic field.
    pub const VERMAGIC_LEN: u32 = 256;
    /// Size of a module name field, NUL included (kernel: 56).
    pub const MODULE_NAME_LEN: u32 = 64;
    /// Size of the module-parameter field.
    pub const PARAMS_LEN: u32 = 1024;
    /// Size of the kernel-log field of a completion.
    pub const LOG_LEN: u32 = 3584;
}

/// Each command (`OP_*`) by the name both sides' logs give it; the C header's
/// `vesper_op_name()` is generated from this.
pub const OP_NAMES: &[(u32, &str)] = &[
    (OP_LOAD, "load"),
    (OP_UNLOAD, "unload"),
    (OP_LIST, "list"),
    (OP_KMSG, "kmsg"),
    (OP_CLOCK, "clock"),
];

wire_structs! {
    /// First page of the region.
    c_name = "vesper_region_header";
    pub struct RegionHeader {
        /// [`REGION_MAGIC`], written by the host.
        pub magic: u64,
        /// [`ABI_VERSION`], written by the host.
        pub abi_version: u32,
        /// `HOST_FEATURE_*` bits the host offers, written by the host.
        pub host_features: u32,
        /// `HOST_STATE_*`, host-owned.
        pub host_state: u32,
        /// `GUEST_STATE_*`, guest-owned.
        pub guest_state: u32,
        /// Bumped by the guest each time its frontend starts (reboot, rebind).
        pub generation: u32,
        /// Features the guest uses (none in v1).
        pub guest_features: u32,
        /// Region size in bytes, written by the host.
        pub region_size: u64,
        /// Reserved, zero.
        pub reserved: [u32; 6],
    }

    /// One grant: a range of the data area the guest lets the host read or write.
    c_name = "vesper_grant_entry";
    pub struct GrantEntry {
        /// Region offset of the range; at or above [`DATA_AREA_OFFSET`]. With
        /// `GRANT_GUEST_FRAMES`: the guest-physical address of the first frame.
        pub offset: u64,
        /// Length in bytes.
        pub len: u32,
        /// `GRANT_READ` | `GRANT_WRITE`, optionally | `GRANT_GUEST_FRAMES`.
        pub access: u32,
        /// `GRANT_OWNER_*`: what the range is for.
        pub owner: u32,
        /// Generation the grant was made in; stale generations are invalid.
        pub generation: u32,
        /// `GRANT_STATE_*`.
        pub state: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }

    /// Producer/consumer indices of one ring, on separate cache lines.
    c_name = "vesper_ring_control";
    pub struct RingControl {
        /// Free-running count of messages produced.
        pub producer: u32,
        /// Reserved, zero.
        pub pad0: [u32; 15],
        /// Free-running count of messages consumed.
        pub consumer: u32,
        /// Reserved, zero.
        pub pad1: [u32; 15],
    }

    /// Header at the start of every ring slot.
    c_name = "vesper_msg_header";
    pub struct MsgHeader {
        /// `REQ_*`, or `REQ_* | RSP_FLAG` for a response.
        pub kind: u32,
        /// Payload bytes following the header.
        pub len: u32,
        /// Request id chosen by the guest; a response echoes it.
        pub id: u64,
        /// 0, or a negative errno (responses).
        pub status: i32,
        /// Generation of the guest that sent the request.
        pub generation: u32,
        /// Reserved, zero.
        pub reserved: [u32; 2],
    }

    /// Payload of `REQ_HELLO`.
    c_name = "vesper_hello_request";
    pub struct HelloRequest {
        /// Frontend implementation version.
        pub frontend_version: u32,
        /// Online CPUs in the guest.
        pub nr_cpus: u32,
        /// Guest page size.
        pub page_size: u32,
        /// Reserved, zero.
        pub reserved: u32,
        /// Size of the region as the guest's BAR shows it.
        pub region_size: u64,
        /// `uname -r`, NUL-terminated.
        pub kernel_release: [u8; 128],
        /// The kernel's vermagic string, NUL-terminated.
        pub vermagic: [u8; 256],
    }

    /// Payload of the answer to `REQ_HELLO`.
    c_name = "vesper_hello_response";
    pub struct HelloResponse {
        /// Host implementation version.
        pub host_version: u32,
        /// Largest chunk the host writes per `REQ_FETCH_CHUNK`.
        pub max_chunk: u32,
        /// Largest module image the host will push.
        pub max_image_size: u64,
    }

    /// Payload of the answer to `REQ_WAIT_COMMAND`: the next host command.
    c_name = "vesper_command_response";
    pub struct CommandResponse {
        /// Host-chosen id, echoed in fetches and the completion.
        pub command_id: u64,
        /// `OP_*`.
        pub op: u32,
        /// `UNLOAD_FLAG_*` for `OP_UNLOAD`.
        pub flags: u32,
        /// Image size for `OP_LOAD`.
        pub image_size: u64,
        /// CRC-32 (IEEE) of the whole image for `OP_LOAD`.
        pub image_crc32: u32,
        /// Bytes used in `params`, without NUL.
        pub params_len: u32,
        /// Module name (`OP_LOAD`, `OP_UNLOAD`), NUL-terminated.
        pub name: [u8; 64],
        /// Module parameters for `OP_LOAD` ("a=1 b=x"), NUL-terminated.
        pub params: [u8; 1024],
    }

    /// Payload of `REQ_FETCH_CHUNK`.
    c_name = "vesper_fetch_chunk_request";
    pub struct FetchChunkRequest {
        /// The `OP_LOAD` command this chunk belongs to.
        pub command_id: u64,
        /// Image offset wanted.
        pub offset: u64,
        /// Grant (writable, owner staging) to write the chunk into.
        pub grant_ref: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }

    /// Payload of `REQ_PROGRESS`.
    c_name = "vesper_progress_request";
    pub struct ProgressRequest {
        /// The command that moved on.
        pub command_id: u64,
        /// The stage it is about to enter (`STAGE_INIT_MODULE`: the module's init runs
        /// next, in a worker of its own; the completion follows when init returns).
        pub stage: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }

    /// Payload of the answer to `REQ_FETCH_CHUNK`.
    c_name = "vesper_chunk_response";
    pub struct ChunkResponse {
        /// Echo of the request.
        pub command_id: u64,
        /// Echo of the request.
        pub offset: u64,
        /// Bytes written at the start of the granted range.
        pub len: u32,
        /// CRC-32 (IEEE) of those bytes.
        pub crc32: u32,
    }

    /// Payload of `REQ_COMPLETION`: a command finished.
    c_name = "vesper_completion_request";
    pub struct CompletionRequest {
        /// The command that finished.
        pub command_id: u64,
        /// Its `OP_*`.
        pub op: u32,
        /// 0 on success, else a negative errno.
        pub error: i32,
        /// `STAGE_*` where it failed.
        pub stage: u32,
        /// Grant holding result data (`OP_LIST`), or `GRANT_REF_NONE`.
        pub data_grant: u32,
        /// Bytes of result data in that grant.
        pub data_len: u32,
        /// Bytes used in `log`.
        pub log_len: u32,
        /// Guest `ktime_get_ns()` when the completion was posted.
        pub guest_time_ns: u64,
        /// Kernel log tail (failures, `OP_KMSG`), not NUL-terminated.
        pub log: [u8; 3584],
    }

    /// One module in an `OP_LIST` result.
    c_name = "vesper_module_entry";
    pub struct ModuleEntry {
        /// Module name, NUL-terminated.
        pub name: [u8; 64],
        /// Core size in bytes.
        pub size: u64,
        /// Reference count.
        pub refcount: i32,
        /// Kernel `module_state` (0 live, 1 coming, 2 going, 3 unformed).
        pub state: u32,
        /// `MODULE_FLAG_*`.
        pub flags: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }

    /// Payload of `REQ_RELAY_OPEN`. The guest has granted, read-only, the channel's
    /// control area (`control_grant`: `n_cpus` × [`RelayBufControl`] then `n_cpus` ×
    /// `n_subbufs` × `u32` padding) and each CPU's buffer (`buffer_grants[cpu]`, `n_subbufs`
    /// × `subbuf_size` bytes), and, writable, the consumer area (`consumer_grant`:
    /// `n_cpus` × [`RelayConsumer`]).
    c_name = "vesper_relay_open_request";
    pub struct RelayOpenRequest {
        /// Guest-chosen id, unique within a generation.
        pub channel_id: u32,
        /// `RELAY_FLAG_*`.
        pub flags: u32,
        /// Bytes per sub-buffer (multiple of the page size).
        pub subbuf_size: u32,
        /// Sub-buffers per CPU buffer.
        pub n_subbufs: u32,
        /// CPU buffers in the channel.
        pub n_cpus: u32,
        /// Grant of the control area.
        pub control_grant: u32,
        /// Grant of the consumer area.
        pub consumer_grant: u32,
        /// Reserved, zero.
        pub reserved: u32,
        /// Module that opened the channel, NUL-terminated.
        pub module: [u8; 64],
        /// Channel name, NUL-terminated.
        pub name: [u8; 64],
        /// Grant of each CPU buffer; unused entries `GRANT_REF_NONE`.
        pub buffer_grants: [u32; 64],
    }

    /// Payload of `REQ_RELAY_CLOSE`.
    c_name = "vesper_relay_close_request";
    pub struct RelayCloseRequest {
        /// Channel being closed.
        pub channel_id: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }

    /// Writer state of one CPU buffer, guest-written. `position` packs the produced
    /// sub-buffer count (high 32 bits, free-running) and the committed bytes of the
    /// current sub-buffer (low 32 bits) so the host reads both in one atomic load.
    c_name = "vesper_relay_buf_control";
    pub struct RelayBufControl {
        /// `produced << 32 | committed`.
        pub position: u64,
        /// Records the writer dropped (buffer full in no-overwrite mode, record too big,
        /// NMI context).
        pub dropped: u64,
        /// Records written (committed).
        pub written: u64,
        /// Reserved, zero.
        pub reserved: [u64; 5],
    }

    /// Reader state of one CPU buffer, host-written (through the consumer grant).
    c_name = "vesper_relay_consumer";
    pub struct RelayConsumer {
        /// Sub-buffers the host has finished with (free-running). The only word the
        /// guest reads.
        pub consumed: u32,
        /// Host bookkeeping: bytes of sub-buffer `consumed` already parsed. Never read
        /// by the guest; lets a restarted host resume exactly where it stopped.
        pub read_offset: u32,
        /// Host bookkeeping: the next record sequence number the host expects. Never
        /// read by the guest.
        pub next_seq: u64,
        /// Reserved, zero.
        pub reserved: [u32; 12],
    }

    /// Header of every relay record.
    c_name = "vesper_record_header";
    pub struct RecordHeader {
        /// Bytes of header plus payload (not counting alignment padding).
        pub len: u32,
        /// `RECORD_*` type.
        pub rtype: u16,
        /// `RECORD_FLAG_*`.
        pub flags: u16,
        /// Per-CPU-buffer sequence number, from 0: the host counts gaps as lost records.
        pub seq: u64,
        /// Guest `ktime_get_ns()` when written.
        pub timestamp_ns: u64,
    }

    /// `RECORD_PANIC` payload: written from the panic path.
    c_name = "vesper_panic_record";
    pub struct PanicRecord {
        /// CPU that panicked.
        pub cpu: u32,
        /// Pid of the task that panicked.
        pub pid: i32,
        /// Panic message (formatted), NUL-terminated.
        pub message: [u8; 256],
    }

    /// `RECORD_EXIT` payload: a watched task exited.
    c_name = "vesper_exit_record";
    pub struct ExitRecord {
        /// Thread-group id.
        pub pid: i32,
        /// Thread id.
        pub tid: i32,
        /// Exit code as `wait` encodes it: `(code << 8) | signal`.
        pub exit_code: i32,
        /// Signal that killed the task, 0 if it exited.
        pub signal: i32,
        /// Exit status (`exit_code >> 8`) when `signal` is 0.
        pub status: i32,
        /// Reserved, zero.
        pub reserved: u32,
        /// Task command name, NUL-terminated.
        pub comm: [u8; 16],
    }

    /// `RECORD_OOM` payload: the OOM killer's victim.
    c_name = "vesper_oom_record";
    pub struct OomRecord {
        /// Victim pid.
        pub pid: i32,
        /// Victim's oom_score_adj.
        pub oom_score_adj: i32,
        /// Victim's total virtual memory, KiB.
        pub total_vm_kb: u64,
        /// Victim's resident anonymous memory, KiB.
        pub anon_rss_kb: u64,
        /// Victim's resident file memory, KiB.
        pub file_rss_kb: u64,
        /// Victim command name, NUL-terminated.
        pub comm: [u8; 16],
    }

    /// `RECORD_STRESS` payload (test fixture): the n-th of a run of records.
    c_name = "vesper_stress_record";
    pub struct StressRecord {
        /// Index within the run, from 0.
        pub index: u64,
        /// Records in the run.
        pub total: u64,
        /// Filler so a record is 64 bytes with its header.
        pub filler: [u64; 3],
    }
}

// Layout facts the C side and the fixed offsets rely on.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<RegionHeader>() == 64);
    assert!(size_of::<GrantEntry>() == 32);
    assert!(size_of::<RingControl>() == 128);
    assert!(size_of::<MsgHeader>() == 32);
    assert!(size_of::<MsgHeader>() as u32 + SLOT_PAYLOAD_SIZE == SLOT_SIZE);
    assert!(size_of::<CommandResponse>() as u32 <= SLOT_PAYLOAD_SIZE);
    assert!(size_of::<CompletionRequest>() as u32 <= SLOT_PAYLOAD_SIZE);
    assert!(size_of::<HelloRequest>() as u32 <= SLOT_PAYLOAD_SIZE);
    assert!(size_of::<ModuleEntry>() == 88);
    assert!(size_of::<RelayOpenRequest>() as u32 <= SLOT_PAYLOAD_SIZE);
    assert!(size_of::<ProgressRequest>() == 16);
    assert!(size_of::<RelayBufControl>() == 64);
    assert!(size_of::<RelayConsumer>() == 64);
    assert!(size_of::<RecordHeader>() == 24);
    assert!(size_of::<RecordHeader>() + size_of::<StressRecord>() == 64);
    assert!(RELAY_MAX_CPUS == 64 && RELAY_NAME_LEN == 64);
    assert!(PANIC_MSG_LEN == 256 && COMM_LEN == 16);
    assert!(KERNEL_RELEASE_LEN as usize == 128 && VERMAGIC_LEN as usize == 256);
    assert!(MODULE_NAME_LEN as usize == 64 && PARAMS_LEN as usize == 1024);
    assert!(LOG_LEN as usize == 3584);
    assert!(GRANT_TABLE_OFFSET + GRANT_ENTRIES as u64 * 32 <= REQ_RING_OFFSET);
    assert!(REQ_RING_OFFSET + PAGE_SIZE + (RING_SLOTS * SLOT_SIZE) as u64 <= RSP_RING_OFFSET);
    assert!(RSP_RING_OFFSET + PAGE_SIZE + (RING_SLOTS * SLOT_SIZE) as u64 <= DATA_AREA_OFFSET);
    assert!(DATA_AREA_OFFSET < MIN_REGION_SIZE);
    assert!(RING_SLOTS.is_power_of_two());
    assert!(DEFAULT_REGION_SIZE.is_power_of_two());
    assert!((GRANT_FRAMES_MAX_LEN as u64).is_multiple_of(PAGE_SIZE));
    assert!(GRANT_GUEST_FRAMES & (GRANT_READ | GRANT_WRITE) == 0);
};

/// Region offset of the slot at free-running `index` in the ring whose control block
/// sits at `ring_offset`.
pub const fn slot_offset(ring_offset: u64, index: u32) -> u64 {
    ring_offset + PAGE_SIZE + ((index & (RING_SLOTS - 1)) as u64) * SLOT_SIZE as u64
}

/// Region offset of grant entry `grant_ref`, or `None` if out of range.
pub const fn grant_entry_offset(grant_ref: u32) -> Option<u64> {
    if grant_ref < GRANT_ENTRIES {
        Some(GRANT_TABLE_OFFSET + grant_ref as u64 * 32)
    } else {
        None
    }
}

/// The bytes of a NUL-terminated fixed-size field, up to the first NUL.
pub fn c_str_bytes(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Copies `src` into a fixed-size field, NUL-terminated. Returns `false` (and writes
/// nothing) when it does not fit with its NUL.
pub fn fill_c_str(field: &mut [u8], src: &[u8]) -> bool {
    if src.len() >= field.len() || src.contains(&0) {
        return false;
    }
    field.fill(0);
    field[..src.len()].copy_from_slice(src);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_wrap_inside_their_ring() {
        assert_eq!(slot_offset(REQ_RING_OFFSET, 0), REQ_RING_OFFSET + PAGE_SIZE);
        assert_eq!(
            slot_offset(REQ_RING_OFFSET, RING_SLOTS),
            slot_offset(REQ_RING_OFFSET, 0)
        );
        let last = slot_offset(RSP_RING_OFFSET, u32::MAX);
        assert!(last + SLOT_SIZE as u64 <= DATA_AREA_OFFSET);
    }

    #[test]
    fn grant_refs_past_table_are_rejected() {
        assert_eq!(grant_entry_offset(0), Some(GRANT_TABLE_OFFSET));
        assert_eq!(grant_entry_offset(GRANT_ENTRIES), None);
        assert_eq!(grant_entry_offset(GRANT_REF_NONE), None);
    }

    #[test]
    fn c_strings_round_trip_and_refuse_overflow() {
        let mut f = [0xffu8; 8];
        assert!(fill_c_str(&mut f, b"abc"));
        assert_eq!(c_str_bytes(&f), b"abc");
        assert!(!fill_c_str(&mut f, b"12345678"));
        assert!(!fill_c_str(&mut f, b"a\0b"));
        assert_eq!(c_str_bytes(&[b'x'; 4]), b"xxxx");
    }

    #[test]
    fn magic_reads_as_text() {
        assert_eq!(&REGION_MAGIC.to_le_bytes(), b"VESPERv1");
    }
}
