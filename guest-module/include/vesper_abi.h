/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Vesper shared-region ABI.
 *
 * GENERATED from shared-abi/src/lib.rs by `cargo run -p vesper-abi-header`.
 * Do not edit: a test fails when this file differs from the Rust definitions.
 */
#ifndef VESPER_ABI_H
#define VESPER_ABI_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/stddef.h>
#else
#include <stdint.h>
#include <stddef.h>
#endif

/* Region magic, "VESPERv1" read as a little-endian u64; written by the host. */
#define VESPER_REGION_MAGIC 0x3176524550534556ULL
/* Version of this layout. Bumped on any incompatible change. */
#define VESPER_ABI_VERSION 0x1U
/* Page size the layout is built on. */
#define VESPER_PAGE_SIZE 0x1000U
/* Smallest region the layout fits in. */
#define VESPER_MIN_REGION_SIZE 0x200000U
/* Region size the host creates by default (ivshmem wants a power of two). */
#define VESPER_DEFAULT_REGION_SIZE 0x800000U
/* Offset of [`RegionHeader`]. */
#define VESPER_HEADER_OFFSET 0x0U
/* Offset of the grant table. */
#define VESPER_GRANT_TABLE_OFFSET 0x1000U
/* Number of grant entries. */
#define VESPER_GRANT_ENTRIES 0x80U
/* Offset of the request ring's [`RingControl`]; its slots follow one page later. */
#define VESPER_REQ_RING_OFFSET 0x2000U
/* Offset of the response ring's [`RingControl`]; its slots follow one page later. */
#define VESPER_RSP_RING_OFFSET 0x13000U
/* Slots per ring (a power of two). */
#define VESPER_RING_SLOTS 0x10U
/* Bytes per ring slot: a [`MsgHeader`] followed by the payload. */
#define VESPER_SLOT_SIZE 0x1000U
/* Payload bytes available in one slot. */
#define VESPER_SLOT_PAYLOAD_SIZE 0xfe0U
/* Start of the grantable data area; grants below it are invalid. */
#define VESPER_DATA_AREA_OFFSET 0x100000U
/* Host feature bit: the host owns guest RAM and honours [`GRANT_GUEST_FRAMES`]. */
#define VESPER_HOST_FEATURE_GUEST_FRAMES 0x1U
/* Host state: region initialised, backend listening. */
#define VESPER_HOST_STATE_READY 0x1U
/* Guest state: no frontend bound (initial zero). */
#define VESPER_GUEST_STATE_ABSENT 0x0U
/* Guest state: frontend bound and serving. */
#define VESPER_GUEST_STATE_UP 0x1U
/* Guest state: frontend unbound cleanly. */
#define VESPER_GUEST_STATE_DOWN 0x2U
/* Grant access bit: host may read. */
#define VESPER_GRANT_READ 0x1U
/* Grant access bit: host may write. */
#define VESPER_GRANT_WRITE 0x2U
/* Grant access bit: `offset` is a guest-physical address (page aligned) and `len` a
 * multiple of [`PAGE_SIZE`] up to [`GRANT_FRAMES_MAX_LEN`]: the grant names guest RAM
 * frames, not a region range. Only for hosts that offer
 * [`HOST_FEATURE_GUEST_FRAMES`] (a VMM that owns guest RAM); others refuse it. */
#define VESPER_GRANT_GUEST_FRAMES 0x4U
/* Longest guest-frame grant: 4 MiB, the largest physically contiguous block the
 * kernel's page allocator hands out (order 10). */
#define VESPER_GRANT_FRAMES_MAX_LEN 0x400000U
/* Grant entry state: unused. */
#define VESPER_GRANT_STATE_FREE 0x0U
/* Grant entry state: live. */
#define VESPER_GRANT_STATE_ACTIVE 0x1U
/* Grant owner: module image staging (host writes one chunk). */
#define VESPER_GRANT_OWNER_STAGING 0x1U
/* Grant owner: module list produced for the host. */
#define VESPER_GRANT_OWNER_MODLIST 0x2U
/* Grant owner: relay channel buffers. */
#define VESPER_GRANT_OWNER_RELAY 0x3U
/* "No grant" value in grant-reference fields. */
#define VESPER_GRANT_REF_NONE 0xffffffffU
/* Request: the frontend announces itself ([`HelloRequest`]). */
#define VESPER_REQ_HELLO 0x1U
/* Request: the frontend waits for the next host command (answered by [`CommandResponse`]). */
#define VESPER_REQ_WAIT_COMMAND 0x2U
/* Request: write the next image chunk into a granted range ([`FetchChunkRequest`]). */
#define VESPER_REQ_FETCH_CHUNK 0x3U
/* Request: a command finished ([`CompletionRequest`]). */
#define VESPER_REQ_COMPLETION 0x4U
/* Request: a relay channel was opened; the host builds its view ([`RelayOpenRequest`]). */
#define VESPER_REQ_RELAY_OPEN 0x5U
/* Request: a relay channel is closing; the host drops its view ([`RelayCloseRequest`]). */
#define VESPER_REQ_RELAY_CLOSE 0x6U
/* Request: a command is about to enter a stage that may run long ([`ProgressRequest`]).
 * The host answers 0 (go on: it now waits for that stage by the stage's own limit,
 * not the step timeout) or a negative errno (`-ECANCELED`: it gave up on the
 * command; the guest must not start the stage). */
#define VESPER_REQ_PROGRESS 0x7U
/* Bit set in a response's kind: response kind = request kind | this. */
#define VESPER_RSP_FLAG 0x80U
/* Command: load the module image that follows. */
#define VESPER_OP_LOAD 0x1U
/* Command: unload a module by name. */
#define VESPER_OP_UNLOAD 0x2U
/* Command: list the guest's modules into a granted range. */
#define VESPER_OP_LIST 0x3U
/* Command: return the tail of the kernel log. */
#define VESPER_OP_KMSG 0x4U
/* Command: answer at once; the completion's `guest_time_ns` lets the host map the
 * guest's clock onto its own (NTP-style, from the round trip). */
#define VESPER_OP_CLOCK 0x5U
/* Unload flag: force (`O_TRUNC` to `delete_module`). */
#define VESPER_UNLOAD_FLAG_FORCE 0x1U
/* Completion stage: no failure. */
#define VESPER_STAGE_DONE 0x0U
/* Completion stage: failed while fetching the image. */
#define VESPER_STAGE_TRANSFER 0x1U
/* Completion stage: failed preparing the loader context (memory, symbols). */
#define VESPER_STAGE_PREPARE 0x2U
/* Completion stage: the kernel's init_module failed (module init or loader checks). */
#define VESPER_STAGE_INIT_MODULE 0x3U
/* Completion stage: the kernel's delete_module failed. */
#define VESPER_STAGE_DELETE_MODULE 0x4U
/* Completion stage: listing modules failed. */
#define VESPER_STAGE_LIST 0x5U
/* Completion stage: the command was malformed. */
#define VESPER_STAGE_COMMAND 0x6U
/* Module entry flag: this module was pushed by Vesper. */
#define VESPER_MODULE_FLAG_PUSHED 0x1U
/* Module entry flag: this module is the Vesper frontend itself. */
#define VESPER_MODULE_FLAG_FRONTEND 0x2U
/* Doorbell vector for control-ring requests. */
#define VESPER_VECTOR_CONTROL 0x0U
/* Doorbell vector for relay index updates (sub-buffer switches, urgent records). */
#define VESPER_VECTOR_RELAY 0x1U
/* Most CPUs a relay channel spans. */
#define VESPER_RELAY_MAX_CPUS 0x40U
/* Smallest sub-buffer. */
#define VESPER_RELAY_MIN_SUBBUF_SIZE 0x1000U
/* Largest sub-buffer. */
#define VESPER_RELAY_MAX_SUBBUF_SIZE 0x100000U
/* Most sub-buffers per CPU buffer. */
#define VESPER_RELAY_MAX_SUBBUFS 0x100U
/* Size of a channel or module name field, NUL included. */
#define VESPER_RELAY_NAME_LEN 0x40U
/* Channel flag: overwrite the oldest sub-buffer when full (flight recorder);
 * without it the writer drops new records when every sub-buffer is unconsumed. */
#define VESPER_RELAY_FLAG_OVERWRITE 0x1U
/* Record flag: notify the host at once instead of at the next sub-buffer switch. */
#define VESPER_RECORD_FLAG_URGENT 0x1U
/* Records start at multiples of this. */
#define VESPER_RECORD_ALIGN 0x8U
/* Record type: raw bytes (no decoder). */
#define VESPER_RECORD_RAW 0x0U
/* Record type: [`PanicRecord`]. */
#define VESPER_RECORD_PANIC 0x1U
/* Record type: [`ExitRecord`]. */
#define VESPER_RECORD_EXIT 0x2U
/* Record type: [`OomRecord`]. */
#define VESPER_RECORD_OOM 0x3U
/* Record type: [`StressRecord`] (test fixture). */
#define VESPER_RECORD_STRESS 0x4U
/* Record type: a probe spec's record (`host/probespec`); its fields are described
 * by the `vesper_record` modinfo entry of the module that wrote it. */
#define VESPER_RECORD_SPEC 0x5U
/* Largest payload of a `RECORD_SPEC` record (it is built on the kernel stack of a
 * probe handler). */
#define VESPER_SPEC_RECORD_MAX 0x100U
/* Size of the text field of a panic record. */
#define VESPER_PANIC_MSG_LEN 0x100U
/* Size of a task command name field (`TASK_COMM_LEN` is 16). */
#define VESPER_COMM_LEN 0x10U
/* Size of the kernel-release field (utsname is 65). */
#define VESPER_KERNEL_RELEASE_LEN 0x80U
/* Size of the vermagic field. */
#define VESPER_VERMAGIC_LEN 0x100U
/* Size of a module name field, NUL included (kernel: 56). */
#define VESPER_MODULE_NAME_LEN 0x40U
/* Size of the module-parameter field. */
#define VESPER_PARAMS_LEN 0x400U
/* Size of the kernel-log field of a completion. */
#define VESPER_LOG_LEN 0xe00U

/* The name of command VESPER_OP_*, as logs print it (from OP_NAMES). */
static inline const char *vesper_op_name(unsigned int op)
{
	switch (op) {
	case 1: return "load";
	case 2: return "unload";
	case 3: return "list";
	case 4: return "kmsg";
	case 5: return "clock";
	default: return "unknown";
	}
}

/* First page of the region. */
struct vesper_region_header {
	uint64_t magic;
	uint32_t abi_version;
	uint32_t host_features;
	uint32_t host_state;
	uint32_t guest_state;
	uint32_t generation;
	uint32_t guest_features;
	uint64_t region_size;
	uint32_t reserved[6];
};
_Static_assert(sizeof(struct vesper_region_header) == 64, "vesper_region_header size");
_Static_assert(offsetof(struct vesper_region_header, magic) == 0, "vesper_region_header.magic");
_Static_assert(offsetof(struct vesper_region_header, abi_version) == 8, "vesper_region_header.abi_version");
_Static_assert(offsetof(struct vesper_region_header, host_features) == 12, "vesper_region_header.host_features");
_Static_assert(offsetof(struct vesper_region_header, host_state) == 16, "vesper_region_header.host_state");
_Static_assert(offsetof(struct vesper_region_header, guest_state) == 20, "vesper_region_header.guest_state");
_Static_assert(offsetof(struct vesper_region_header, generation) == 24, "vesper_region_header.generation");
_Static_assert(offsetof(struct vesper_region_header, guest_features) == 28, "vesper_region_header.guest_features");
_Static_assert(offsetof(struct vesper_region_header, region_size) == 32, "vesper_region_header.region_size");
_Static_assert(offsetof(struct vesper_region_header, reserved) == 40, "vesper_region_header.reserved");

/* One grant: a range of the data area the guest lets the host read or write. */
struct vesper_grant_entry {
	uint64_t offset;
	uint32_t len;
	uint32_t access;
	uint32_t owner;
	uint32_t generation;
	uint32_t state;
	uint32_t reserved;
};
_Static_assert(sizeof(struct vesper_grant_entry) == 32, "vesper_grant_entry size");
_Static_assert(offsetof(struct vesper_grant_entry, offset) == 0, "vesper_grant_entry.offset");
_Static_assert(offsetof(struct vesper_grant_entry, len) == 8, "vesper_grant_entry.len");
_Static_assert(offsetof(struct vesper_grant_entry, access) == 12, "vesper_grant_entry.access");
_Static_assert(offsetof(struct vesper_grant_entry, owner) == 16, "vesper_grant_entry.owner");
_Static_assert(offsetof(struct vesper_grant_entry, generation) == 20, "vesper_grant_entry.generation");
_Static_assert(offsetof(struct vesper_grant_entry, state) == 24, "vesper_grant_entry.state");
_Static_assert(offsetof(struct vesper_grant_entry, reserved) == 28, "vesper_grant_entry.reserved");

/* Producer/consumer indices of one ring, on separate cache lines. */
struct vesper_ring_control {
	uint32_t producer;
	uint32_t pad0[15];
	uint32_t consumer;
	uint32_t pad1[15];
};
_Static_assert(sizeof(struct vesper_ring_control) == 128, "vesper_ring_control size");
_Static_assert(offsetof(struct vesper_ring_control, producer) == 0, "vesper_ring_control.producer");
_Static_assert(offsetof(struct vesper_ring_control, pad0) == 4, "vesper_ring_control.pad0");
_Static_assert(offsetof(struct vesper_ring_control, consumer) == 64, "vesper_ring_control.consumer");
_Static_assert(offsetof(struct vesper_ring_control, pad1) == 68, "vesper_ring_control.pad1");

/* Header at the start of every ring slot. */
struct vesper_msg_header {
	uint32_t kind;
	uint32_t len;
	uint64_t id;
	int32_t status;
	uint32_t generation;
	uint32_t reserved[2];
};
_Static_assert(sizeof(struct vesper_msg_header) == 32, "vesper_msg_header size");
_Static_assert(offsetof(struct vesper_msg_header, kind) == 0, "vesper_msg_header.kind");
_Static_assert(offsetof(struct vesper_msg_header, len) == 4, "vesper_msg_header.len");
_Static_assert(offsetof(struct vesper_msg_header, id) == 8, "vesper_msg_header.id");
_Static_assert(offsetof(struct vesper_msg_header, status) == 16, "vesper_msg_header.status");
_Static_assert(offsetof(struct vesper_msg_header, generation) == 20, "vesper_msg_header.generation");
_Static_assert(offsetof(struct vesper_msg_header, reserved) == 24, "vesper_msg_header.reserved");

/* Payload of `REQ_HELLO`. */
struct vesper_hello_request {
	uint32_t frontend_version;
	uint32_t nr_cpus;
	uint32_t page_size;
	uint32_t reserved;
	uint64_t region_size;
	uint8_t kernel_release[128];
	uint8_t vermagic[256];
};
_Static_assert(sizeof(struct vesper_hello_request) == 408, "vesper_hello_request size");
_Static_assert(offsetof(struct vesper_hello_request, frontend_version) == 0, "vesper_hello_request.frontend_version");
_Static_assert(offsetof(struct vesper_hello_request, nr_cpus) == 4, "vesper_hello_request.nr_cpus");
_Static_assert(offsetof(struct vesper_hello_request, page_size) == 8, "vesper_hello_request.page_size");
_Static_assert(offsetof(struct vesper_hello_request, reserved) == 12, "vesper_hello_request.reserved");
_Static_assert(offsetof(struct vesper_hello_request, region_size) == 16, "vesper_hello_request.region_size");
_Static_assert(offsetof(struct vesper_hello_request, kernel_release) == 24, "vesper_hello_request.kernel_release");
_Static_assert(offsetof(struct vesper_hello_request, vermagic) == 152, "vesper_hello_request.vermagic");

/* Payload of the answer to `REQ_HELLO`. */
struct vesper_hello_response {
	uint32_t host_version;
	uint32_t max_chunk;
	uint64_t max_image_size;
};
_Static_assert(sizeof(struct vesper_hello_response) == 16, "vesper_hello_response size");
_Static_assert(offsetof(struct vesper_hello_response, host_version) == 0, "vesper_hello_response.host_version");
_Static_assert(offsetof(struct vesper_hello_response, max_chunk) == 4, "vesper_hello_response.max_chunk");
_Static_assert(offsetof(struct vesper_hello_response, max_image_size) == 8, "vesper_hello_response.max_image_size");

/* Payload of the answer to `REQ_WAIT_COMMAND`: the next host command. */
struct vesper_command_response {
	uint64_t command_id;
	uint32_t op;
	uint32_t flags;
	uint64_t image_size;
	uint32_t image_crc32;
	uint32_t params_len;
	uint8_t name[64];
	uint8_t params[1024];
};
_Static_assert(sizeof(struct vesper_command_response) == 1120, "vesper_command_response size");
_Static_assert(offsetof(struct vesper_command_response, command_id) == 0, "vesper_command_response.command_id");
_Static_assert(offsetof(struct vesper_command_response, op) == 8, "vesper_command_response.op");
_Static_assert(offsetof(struct vesper_command_response, flags) == 12, "vesper_command_response.flags");
_Static_assert(offsetof(struct vesper_command_response, image_size) == 16, "vesper_command_response.image_size");
_Static_assert(offsetof(struct vesper_command_response, image_crc32) == 24, "vesper_command_response.image_crc32");
_Static_assert(offsetof(struct vesper_command_response, params_len) == 28, "vesper_command_response.params_len");
_Static_assert(offsetof(struct vesper_command_response, name) == 32, "vesper_command_response.name");
_Static_assert(offsetof(struct vesper_command_response, params) == 96, "vesper_command_response.params");

/* Payload of `REQ_FETCH_CHUNK`. */
struct vesper_fetch_chunk_request {
	uint64_t command_id;
	uint64_t offset;
	uint32_t grant_ref;
	uint32_t reserved;
};
_Static_assert(sizeof(struct vesper_fetch_chunk_request) == 24, "vesper_fetch_chunk_request size");
_Static_assert(offsetof(struct vesper_fetch_chunk_request, command_id) == 0, "vesper_fetch_chunk_request.command_id");
_Static_assert(offsetof(struct vesper_fetch_chunk_request, offset) == 8, "vesper_fetch_chunk_request.offset");
_Static_assert(offsetof(struct vesper_fetch_chunk_request, grant_ref) == 16, "vesper_fetch_chunk_request.grant_ref");
_Static_assert(offsetof(struct vesper_fetch_chunk_request, reserved) == 20, "vesper_fetch_chunk_request.reserved");

/* Payload of `REQ_PROGRESS`. */
struct vesper_progress_request {
	uint64_t command_id;
	uint32_t stage;
	uint32_t reserved;
};
_Static_assert(sizeof(struct vesper_progress_request) == 16, "vesper_progress_request size");
_Static_assert(offsetof(struct vesper_progress_request, command_id) == 0, "vesper_progress_request.command_id");
_Static_assert(offsetof(struct vesper_progress_request, stage) == 8, "vesper_progress_request.stage");
_Static_assert(offsetof(struct vesper_progress_request, reserved) == 12, "vesper_progress_request.reserved");

/* Payload of the answer to `REQ_FETCH_CHUNK`. */
struct vesper_chunk_response {
	uint64_t command_id;
	uint64_t offset;
	uint32_t len;
	uint32_t crc32;
};
_Static_assert(sizeof(struct vesper_chunk_response) == 24, "vesper_chunk_response size");
_Static_assert(offsetof(struct vesper_chunk_response, command_id) == 0, "vesper_chunk_response.command_id");
_Static_assert(offsetof(struct vesper_chunk_response, offset) == 8, "vesper_chunk_response.offset");
_Static_assert(offsetof(struct vesper_chunk_response, len) == 16, "vesper_chunk_response.len");
_Static_assert(offsetof(struct vesper_chunk_response, crc32) == 20, "vesper_chunk_response.crc32");

/* Payload of `REQ_COMPLETION`: a command finished. */
struct vesper_completion_request {
	uint64_t command_id;
	uint32_t op;
	int32_t error;
	uint32_t stage;
	uint32_t data_grant;
	uint32_t data_len;
	uint32_t log_len;
	uint64_t guest_time_ns;
	uint8_t log[3584];
};
_Static_assert(sizeof(struct vesper_completion_request) == 3624, "vesper_completion_request size");
_Static_assert(offsetof(struct vesper_completion_request, command_id) == 0, "vesper_completion_request.command_id");
_Static_assert(offsetof(struct vesper_completion_request, op) == 8, "vesper_completion_request.op");
_Static_assert(offsetof(struct vesper_completion_request, error) == 12, "vesper_completion_request.error");
_Static_assert(offsetof(struct vesper_completion_request, stage) == 16, "vesper_completion_request.stage");
_Static_assert(offsetof(struct vesper_completion_request, data_grant) == 20, "vesper_completion_request.data_grant");
_Static_assert(offsetof(struct vesper_completion_request, data_len) == 24, "vesper_completion_request.data_len");
_Static_assert(offsetof(struct vesper_completion_request, log_len) == 28, "vesper_completion_request.log_len");
_Static_assert(offsetof(struct vesper_completion_request, guest_time_ns) == 32, "vesper_completion_request.guest_time_ns");
_Static_assert(offsetof(struct vesper_completion_request, log) == 40, "vesper_completion_request.log");

/* One module in an `OP_LIST` result. */
struct vesper_module_entry {
	uint8_t name[64];
	uint64_t size;
	int32_t refcount;
	uint32_t state;
	uint32_t flags;
	uint32_t reserved;
};
_Static_assert(sizeof(struct vesper_module_entry) == 88, "vesper_module_entry size");
_Static_assert(offsetof(struct vesper_module_entry, name) == 0, "vesper_module_entry.name");
_Static_assert(offsetof(struct vesper_module_entry, size) == 64, "vesper_module_entry.size");
_Static_assert(offsetof(struct vesper_module_entry, refcount) == 72, "vesper_module_entry.refcount");
_Static_assert(offsetof(struct vesper_module_entry, state) == 76, "vesper_module_entry.state");
_Static_assert(offsetof(struct vesper_module_entry, flags) == 80, "vesper_module_entry.flags");
_Static_assert(offsetof(struct vesper_module_entry, reserved) == 84, "vesper_module_entry.reserved");

/* Payload of `REQ_RELAY_OPEN`. The guest has granted, read-only, the channel's
 * control area (`control_grant`: `n_cpus` × [`RelayBufControl`] then `n_cpus` ×
 * `n_subbufs` × `u32` padding) and each CPU's buffer (`buffer_grants[cpu]`, `n_subbufs`
 * × `subbuf_size` bytes), and, writable, the consumer area (`consumer_grant`:
 * `n_cpus` × [`RelayConsumer`]). */
struct vesper_relay_open_request {
	uint32_t channel_id;
	uint32_t flags;
	uint32_t subbuf_size;
	uint32_t n_subbufs;
	uint32_t n_cpus;
	uint32_t control_grant;
	uint32_t consumer_grant;
	uint32_t reserved;
	uint8_t module[64];
	uint8_t name[64];
	uint32_t buffer_grants[64];
};
_Static_assert(sizeof(struct vesper_relay_open_request) == 416, "vesper_relay_open_request size");
_Static_assert(offsetof(struct vesper_relay_open_request, channel_id) == 0, "vesper_relay_open_request.channel_id");
_Static_assert(offsetof(struct vesper_relay_open_request, flags) == 4, "vesper_relay_open_request.flags");
_Static_assert(offsetof(struct vesper_relay_open_request, subbuf_size) == 8, "vesper_relay_open_request.subbuf_size");
_Static_assert(offsetof(struct vesper_relay_open_request, n_subbufs) == 12, "vesper_relay_open_request.n_subbufs");
_Static_assert(offsetof(struct vesper_relay_open_request, n_cpus) == 16, "vesper_relay_open_request.n_cpus");
_Static_assert(offsetof(struct vesper_relay_open_request, control_grant) == 20, "vesper_relay_open_request.control_grant");
_Static_assert(offsetof(struct vesper_relay_open_request, consumer_grant) == 24, "vesper_relay_open_request.consumer_grant");
_Static_assert(offsetof(struct vesper_relay_open_request, reserved) == 28, "vesper_relay_open_request.reserved");
_Static_assert(offsetof(struct vesper_relay_open_request, module) == 32, "vesper_relay_open_request.module");
_Static_assert(offsetof(struct vesper_relay_open_request, name) == 96, "vesper_relay_open_request.name");
_Static_assert(offsetof(struct vesper_relay_open_request, buffer_grants) == 160, "vesper_relay_open_request.buffer_grants");

/* Payload of `REQ_RELAY_CLOSE`. */
struct vesper_relay_close_request {
	uint32_t channel_id;
	uint32_t reserved;
};
_Static_assert(sizeof(struct vesper_relay_close_request) == 8, "vesper_relay_close_request size");
_Static_assert(offsetof(struct vesper_relay_close_request, channel_id) == 0, "vesper_relay_close_request.channel_id");
_Static_assert(offsetof(struct vesper_relay_close_request, reserved) == 4, "vesper_relay_close_request.reserved");

/* Writer state of one CPU buffer, guest-written. `position` packs the produced
 * sub-buffer count (high 32 bits, free-running) and the committed bytes of the
 * current sub-buffer (low 32 bits) so the host reads both in one atomic load. */
struct vesper_relay_buf_control {
	uint64_t position;
	uint64_t dropped;
	uint64_t written;
	uint64_t reserved[5];
};
_Static_assert(sizeof(struct vesper_relay_buf_control) == 64, "vesper_relay_buf_control size");
_Static_assert(offsetof(struct vesper_relay_buf_control, position) == 0, "vesper_relay_buf_control.position");
_Static_assert(offsetof(struct vesper_relay_buf_control, dropped) == 8, "vesper_relay_buf_control.dropped");
_Static_assert(offsetof(struct vesper_relay_buf_control, written) == 16, "vesper_relay_buf_control.written");
_Static_assert(offsetof(struct vesper_relay_buf_control, reserved) == 24, "vesper_relay_buf_control.reserved");

/* Reader state of one CPU buffer, host-written (through the consumer grant). */
struct vesper_relay_consumer {
	uint32_t consumed;
	uint32_t read_offset;
	uint64_t next_seq;
	uint32_t reserved[12];
};
_Static_assert(sizeof(struct vesper_relay_consumer) == 64, "vesper_relay_consumer size");
_Static_assert(offsetof(struct vesper_relay_consumer, consumed) == 0, "vesper_relay_consumer.consumed");
_Static_assert(offsetof(struct vesper_relay_consumer, read_offset) == 4, "vesper_relay_consumer.read_offset");
_Static_assert(offsetof(struct vesper_relay_consumer, next_seq) == 8, "vesper_relay_consumer.next_seq");
_Static_assert(offsetof(struct vesper_relay_consumer, reserved) == 16, "vesper_relay_consumer.reserved");

/* Header of every relay record. */
struct vesper_record_header {
	uint32_t len;
	uint16_t rtype;
	uint16_t flags;
	uint64_t seq;
	uint64_t timestamp_ns;
};
_Static_assert(sizeof(struct vesper_record_header) == 24, "vesper_record_header size");
_Static_assert(offsetof(struct vesper_record_header, len) == 0, "vesper_record_header.len");
_Static_assert(offsetof(struct vesper_record_header, rtype) == 4, "vesper_record_header.rtype");
_Static_assert(offsetof(struct vesper_record_header, flags) == 6, "vesper_record_header.flags");
_Static_assert(offsetof(struct vesper_record_header, seq) == 8, "vesper_record_header.seq");
_Static_assert(offsetof(struct vesper_record_header, timestamp_ns) == 16, "vesper_record_header.timestamp_ns");

/* `RECORD_PANIC` payload: written from the panic path. */
struct vesper_panic_record {
	uint32_t cpu;
	int32_t pid;
	uint8_t message[256];
};
_Static_assert(sizeof(struct vesper_panic_record) == 264, "vesper_panic_record size");
_Static_assert(offsetof(struct vesper_panic_record, cpu) == 0, "vesper_panic_record.cpu");
_Static_assert(offsetof(struct vesper_panic_record, pid) == 4, "vesper_panic_record.pid");
_Static_assert(offsetof(struct vesper_panic_record, message) == 8, "vesper_panic_record.message");

/* `RECORD_EXIT` payload: a watched task exited. */
struct vesper_exit_record {
	int32_t pid;
	int32_t tid;
	int32_t exit_code;
	int32_t signal;
	int32_t status;
	uint32_t reserved;
	uint8_t comm[16];
};
_Static_assert(sizeof(struct vesper_exit_record) == 40, "vesper_exit_record size");
_Static_assert(offsetof(struct vesper_exit_record, pid) == 0, "vesper_exit_record.pid");
_Static_assert(offsetof(struct vesper_exit_record, tid) == 4, "vesper_exit_record.tid");
_Static_assert(offsetof(struct vesper_exit_record, exit_code) == 8, "vesper_exit_record.exit_code");
_Static_assert(offsetof(struct vesper_exit_record, signal) == 12, "vesper_exit_record.signal");
_Static_assert(offsetof(struct vesper_exit_record, status) == 16, "vesper_exit_record.status");
_Static_assert(offsetof(struct vesper_exit_record, reserved) == 20, "vesper_exit_record.reserved");
_Static_assert(offsetof(struct vesper_exit_record, comm) == 24, "vesper_exit_record.comm");

/* `RECORD_OOM` payload: the OOM killer's victim. */
struct vesper_oom_record {
	int32_t pid;
	int32_t oom_score_adj;
	uint64_t total_vm_kb;
	uint64_t anon_rss_kb;
	uint64_t file_rss_kb;
	uint8_t comm[16];
};
_Static_assert(sizeof(struct vesper_oom_record) == 48, "vesper_oom_record size");
_Static_assert(offsetof(struct vesper_oom_record, pid) == 0, "vesper_oom_record.pid");
_Static_assert(offsetof(struct vesper_oom_record, oom_score_adj) == 4, "vesper_oom_record.oom_score_adj");
_Static_assert(offsetof(struct vesper_oom_record, total_vm_kb) == 8, "vesper_oom_record.total_vm_kb");
_Static_assert(offsetof(struct vesper_oom_record, anon_rss_kb) == 16, "vesper_oom_record.anon_rss_kb");
_Static_assert(offsetof(struct vesper_oom_record, file_rss_kb) == 24, "vesper_oom_record.file_rss_kb");
_Static_assert(offsetof(struct vesper_oom_record, comm) == 32, "vesper_oom_record.comm");

/* `RECORD_STRESS` payload (test fixture): the n-th of a run of records. */
struct vesper_stress_record {
	uint64_t index;
	uint64_t total;
	uint64_t filler[3];
};
_Static_assert(sizeof(struct vesper_stress_record) == 40, "vesper_stress_record size");
_Static_assert(offsetof(struct vesper_stress_record, index) == 0, "vesper_stress_record.index");
_Static_assert(offsetof(struct vesper_stress_record, total) == 8, "vesper_stress_record.total");
_Static_assert(offsetof(struct vesper_stress_record, filler) == 16, "vesper_stress_record.filler");

#endif /* VESPER_ABI_H */
