// SPDX-License-Identifier: GPL-2.0
// Host-kernel probes on a VM's vCPU threads: KVM exits and entries, KVM_RUN calls,
// scheduling (on CPU, off CPU, runnable but waiting). Only threads the host put into
// `vcpus` (thread id -> slot in `stats`) are counted. The hash is looked up once per
// context switch, for the task coming in, and the answer kept per CPU in
// `current_vcpu`: the programs on the per-exit path (kvm_*) read that and index
// `stats` directly (array lookups the verifier inlines), so an exit costs no hashing.
//
// The hot tracepoints are BTF-typed raw tracepoints (tp_btf: called straight from the
// tracepoint with its arguments, no trace record built); kvm_exit stays a classic
// tracepoint, whose record carries the vendor's exit reason. Kernel types are declared
// with preserve_access_index: offsets are relocated against the running kernel's BTF
// (/sys/kernel/btf/vmlinux) at load time (CO-RE), so one object serves every kernel
// with BTF.
#include <linux/types.h>
#include <linux/bpf.h>
#include <stdbool.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define PAC __attribute__((preserve_access_index))

struct trace_entry {
	unsigned short type;
	unsigned char flags;
	unsigned char preempt_count;
	int pid;
} PAC;

struct trace_event_raw_kvm_exit {
	struct trace_entry ent;
	unsigned int exit_reason;
	unsigned long guest_rip;
	__u32 isa;
} PAC;

struct task_struct {
	int pid;
} PAC;

#define VMM_REASONS 48

// Mirrored by `RawVcpu` in src/bpf.rs: keep the two in step.
struct vcpu_stats {
	__u64 exits;          // kvm_exit
	__u64 entries;        // kvm_entry
	__u64 uexits;         // kvm_userspace_exit: KVM_RUN returned to the VMM
	__u64 runs;           // KVM_RUN calls (kvm_fpu load)
	__u64 last_entry_ns;  // last kvm_entry
	__u64 last_exit_ns;   // last kvm_exit
	__u64 run_enter_ns;   // last time it went into KVM_RUN
	__u64 run_leave_ns;   // last time it left KVM_RUN
	__u64 switch_in_ns;   // last time it got a CPU
	__u64 switch_out_ns;  // last time it left a CPU
	__u64 runnable_ns;    // runnable since (0: not waiting for a CPU)
	__u64 steal_ns;       // runnable but not running, summed
	__u64 oncpu_ns;       // on a CPU, summed
	__s64 out_state;      // its __state when it left its CPU (0: still runnable)
	__u32 in_run;         // inside KVM_RUN
	__u32 on_cpu;
	__u32 last_reason;    // last kvm_exit reason, (isa << 28) | reason
	__u32 pad;
	// Returns to the VMM by KVM_EXIT_* code (the hot path on every host: counted in
	// place, no second map lookup); codes from VMM_REASONS on go to exit_reasons.
	__u64 vmm_reasons[VMM_REASONS];
};

struct reason_key {
	__u32 tid;
	__u32 reason; // kvm_exit: (isa << 28) | (reason & 0x0fffffff); userspace exit: (3 << 28) | KVM_EXIT_*
};

#define MAX_VCPUS 1024

// Watched vCPU threads: thread id -> slot in `stats` (the host's).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VCPUS);
	__type(key, __u32);
	__type(value, __u32);
} vcpus SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_VCPUS);
	__type(key, __u32);
	__type(value, struct vcpu_stats);
} stats SEC(".maps");

// The task on this CPU since its last context switch, and its slot + 1 (0: not a
// watched vCPU thread).
struct current {
	__u32 tid;
	__u32 slot;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct current);
} current_vcpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct reason_key);
	__type(value, __u64);
} exit_reasons SEC(".maps");

static __always_inline struct vcpu_stats *slot_stats(__u32 slot_plus1)
{
	__u32 slot = slot_plus1 - 1;

	return slot_plus1 ? bpf_map_lookup_elem(&stats, &slot) : 0;
}

// The stats of the vCPU thread running on this CPU, or NULL.
static __always_inline struct vcpu_stats *current_stats(__u32 *tid)
{
	__u32 zero = 0;
	struct current *c = bpf_map_lookup_elem(&current_vcpu, &zero);

	if (!c || !c->slot)
		return 0;
	*tid = c->tid;
	return slot_stats(c->slot);
}

static __always_inline void count_reason(__u32 tid, __u32 reason)
{
	struct reason_key key = { .tid = tid, .reason = reason };
	__u64 one = 1, *n = bpf_map_lookup_elem(&exit_reasons, &key);

	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&exit_reasons, &key, &one, BPF_NOEXIST);
}

SEC("tracepoint/kvm/kvm_exit")
int kvm_exit(struct trace_event_raw_kvm_exit *ctx)
{
	__u32 tid;
	struct vcpu_stats *v = current_stats(&tid);

	if (!v)
		return 0;
	__u32 reason = (ctx->isa << 28) | (ctx->exit_reason & 0x0fffffff);
	v->exits++;
	v->last_exit_ns = bpf_ktime_get_ns();
	v->last_reason = reason;
	count_reason(tid, reason);
	return 0;
}

SEC("tp_btf/kvm_entry")
int BPF_PROG(kvm_entry, void *vcpu, bool immediate_exit)
{
	__u32 tid;
	struct vcpu_stats *v = current_stats(&tid);

	if (!v)
		return 0;
	v->entries++;
	v->last_entry_ns = bpf_ktime_get_ns();
	return 0;
}

// Every return of KVM_RUN to the VMM (an exit it handles, a signal, a pause):
// the vCPU leaves KVM_RUN here.
SEC("tp_btf/kvm_userspace_exit")
int BPF_PROG(kvm_userspace_exit, __u32 reason, int err)
{
	__u32 tid;
	struct vcpu_stats *v = current_stats(&tid);

	if (!v)
		return 0;
	v->uexits++;
	v->in_run = 0;
	v->run_leave_ns = bpf_ktime_get_ns();
	if (reason < VMM_REASONS)
		v->vmm_reasons[reason]++;
	else
		count_reason(tid, (3u << 28) | (reason & 0x0fffffff));
	return 0;
}

// kvm_fpu fires with load=1 as KVM_RUN starts (and load=0 as it returns, which
// kvm_userspace_exit covers), on every x86 vendor (VMX, SVM, PVM): the generic "into
// KVM_RUN" signal.
SEC("tp_btf/kvm_fpu")
int BPF_PROG(kvm_fpu, int load)
{
	__u32 tid;
	struct vcpu_stats *v;

	if (!load)
		return 0;
	v = current_stats(&tid);
	if (!v)
		return 0;
	v->runs++;
	v->in_run = 1;
	v->run_enter_ns = bpf_ktime_get_ns();
	return 0;
}

// The scheduler's TASK_RUNNING: switched out in it (or preempted), a task still
// wants a CPU.
#define TASK_RUNNING 0

SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u32 prev_pid = prev->pid, next_pid = next->pid, zero = 0, *slot;
	struct current *c = bpf_map_lookup_elem(&current_vcpu, &zero);
	struct vcpu_stats *v = 0;
	__u64 now = 0;

	if (!c)
		return 0;
	if (c->tid == prev_pid) {
		v = slot_stats(c->slot);
	} else {
		// First switch on this CPU since loading: the cache does not know prev.
		slot = bpf_map_lookup_elem(&vcpus, &prev_pid);
		if (slot)
			v = slot_stats(*slot + 1);
	}
	if (v) {
		now = bpf_ktime_get_ns();
		if (v->on_cpu && v->switch_in_ns)
			v->oncpu_ns += now - v->switch_in_ns;
		v->on_cpu = 0;
		v->switch_out_ns = now;
		v->out_state = prev_state;
		// Preempted while runnable: it waits for a CPU from now on.
		v->runnable_ns = (preempt || prev_state == TASK_RUNNING) ? now : 0;
	}
	slot = bpf_map_lookup_elem(&vcpus, &next_pid);
	c->tid = next_pid;
	c->slot = slot ? *slot + 1 : 0;
	v = slot ? slot_stats(*slot + 1) : 0;
	if (v) {
		if (!now)
			now = bpf_ktime_get_ns();
		if (v->runnable_ns && now > v->runnable_ns)
			v->steal_ns += now - v->runnable_ns;
		v->runnable_ns = 0;
		v->on_cpu = 1;
		v->switch_in_ns = now;
	}
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(sched_wakeup, struct task_struct *p)
{
	__u32 pid = p->pid, *slot = bpf_map_lookup_elem(&vcpus, &pid);
	struct vcpu_stats *v = slot ? slot_stats(*slot + 1) : 0;

	if (v && !v->on_cpu && !v->runnable_ns)
		v->runnable_ns = bpf_ktime_get_ns();
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
