// SPDX-License-Identifier: GPL-2.0
// Host-kernel probes on a VM's vCPU threads: KVM exits and entries, returns to the VMM,
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
#include <bpf/bpf_core_read.h>

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

struct hlist_node;

struct hlist_head {
	struct hlist_node *first;
} PAC;

struct task_struct {
	int pid;
	struct hlist_head preempt_notifiers;
} PAC;

// x86-64: the syscall a task is in, and its second argument (an ioctl's request).
struct pt_regs {
	unsigned long si;
	unsigned long orig_ax;
} PAC;

#define VMM_REASONS 48

// Mirrored by `RawVcpu` in src/bpf.rs: keep the two in step.
//
// The per-exit path is one program per return to the VMM (kvm_userspace_exit) and reads
// no clock: on a nested host each program run costs ~60-80 ns and bpf_ktime_get_ns ~150
// ns more, against a ~9 us exit. So nothing runs as KVM_RUN starts (kvm_fpu would, twice
// a call: +1.5-2 %); whether a thread is inside KVM_RUN is read from the task by the
// scheduler's programs, at each context switch and tick. Times come from those too; the
// monitor dates what happened between its polls by the counters.
struct vcpu_stats {
	__u64 exits;          // kvm_exit
	__u64 entries;        // kvm_entry
	__u64 uexits;         // kvm_userspace_exit: KVM_RUN returned to the VMM
	__u64 parked_ns;      // first time it left a CPU out of KVM_RUN after its last return
	__u64 parked_uexits;  // uexits then: parked_ns holds while uexits still equals it
	__u64 switch_in_ns;   // last time it got a CPU
	__u64 switch_out_ns;  // last time it left a CPU
	__u64 runnable_ns;    // runnable since (0: not waiting for a CPU)
	__u64 steal_ns;       // runnable but not running, summed
	__u64 oncpu_ns;       // on a CPU, summed
	__s64 out_state;      // its __state when it left its CPU (0: still runnable)
	__u32 in_run;         // inside KVM_RUN (as of its last return, switch or tick)
	__u32 on_cpu;
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

// The task on this CPU since its last context switch, its slot + 1 (0: not a watched
// vCPU thread), and the filter's generation when that was looked up.
struct current {
	__u32 tid;
	__u32 slot;
	__u64 gen;
};

// The filter's generation: the host bumps it after each change to `vcpus`, so a CPU's
// cached answer for the task it is running is looked up again (a thread added while
// on its CPU is counted from then, not from its next context switch; a removed one
// stops being counted in a slot that may go to another thread).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} vcpus_gen SEC(".maps");

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

// The filter's generation now.
static __always_inline __u64 filter_gen(void)
{
	__u32 zero = 0;
	__u64 *gen = bpf_map_lookup_elem(&vcpus_gen, &zero);

	return gen ? *gen : 0;
}

// The stats of the vCPU thread running on this CPU, or NULL. The per-CPU cache is
// looked up again (one hash lookup) when the filter changed since it was filled.
static __always_inline struct vcpu_stats *current_stats(__u32 *tid)
{
	__u32 zero = 0, *slot;
	struct current *c = bpf_map_lookup_elem(&current_vcpu, &zero);
	__u64 gen = filter_gen();

	if (!c)
		return 0;
	if (c->gen != gen) {
		c->tid = (__u32)bpf_get_current_pid_tgid();
		slot = bpf_map_lookup_elem(&vcpus, &c->tid);
		c->slot = slot ? *slot + 1 : 0;
		c->gen = gen;
	}
	if (!c->slot)
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

#define NR_IOCTL 16      // x86-64
#define KVM_RUN_IOCTL 0xae80 // _IO(KVMIO, 0x80)

#define IN_RUN_UNKNOWN 2

// Whether `t` is inside KVM_RUN now: 1 or 0, or IN_RUN_UNKNOWN where this kernel
// cannot say. KVM's vcpu_load() registers a preempt notifier on the task for the length
// of a vCPU ioctl and vcpu_put() removes it, so a notifier says "inside a vCPU ioctl";
// the syscall registers saved at its entry say which (a VMM's register reads while it
// holds a vCPU paused are not KVM_RUN). Without preempt notifiers (no KVM): 0. Without
// x86-64's syscall registers, a notifier cannot be told from KVM_RUN: unknown.
static __always_inline __u32 in_kvm_run(struct task_struct *t)
{
	struct pt_regs *regs;

	if (!bpf_core_field_exists(t->preempt_notifiers) || !t->preempt_notifiers.first)
		return 0;
	regs = (struct pt_regs *)bpf_task_pt_regs(t);
	if (!regs || !bpf_core_field_exists(regs->orig_ax) || !bpf_core_field_exists(regs->si))
		return IN_RUN_UNKNOWN;
	return regs->orig_ax == NR_IOCTL && (__u32)regs->si == KVM_RUN_IOCTL;
}

// Seen inside KVM_RUN or out of it (unknown: keep what the KVM tracepoints said); seen
// inside, any park before is over (the next one is dated afresh).
static __always_inline void note_in_run(struct vcpu_stats *v, __u32 in_run)
{
	if (in_run == IN_RUN_UNKNOWN)
		return;
	v->in_run = in_run;
	if (in_run)
		v->parked_ns = 0;
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
	note_in_run(v, 1);
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
	if (reason < VMM_REASONS)
		v->vmm_reasons[reason]++;
	else
		count_reason(tid, (3u << 28) | (reason & 0x0fffffff));
	return 0;
}

// The scheduler accounts the running task's time at each tick (and switch): a watched
// vCPU thread on a CPU is seen inside KVM_RUN or out of it a tick at a time, which tells
// a guest spinning without exits from a VMM busy in user space.
SEC("tp_btf/sched_stat_runtime")
int BPF_PROG(sched_stat_runtime, struct task_struct *p)
{
	__u32 tid;
	struct vcpu_stats *v = current_stats(&tid);

	if (v && tid == p->pid)
		note_in_run(v, in_kvm_run(p));
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
	__u64 now = 0, gen = filter_gen();

	if (!c)
		return 0;
	if (c->tid == prev_pid && c->gen == gen) {
		v = slot_stats(c->slot);
	} else {
		// First switch on this CPU since loading, or the filter changed since the
		// cache was filled: look prev up.
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
		note_in_run(v, in_kvm_run(prev));
		// Off its CPU out of KVM_RUN for the first time since it last returned to
		// the VMM: parked (or preempted) out of the guest from about now.
		if (!v->in_run && (v->parked_uexits != v->uexits || !v->parked_ns)) {
			v->parked_ns = now;
			v->parked_uexits = v->uexits;
		}
		// Preempted while runnable: it waits for a CPU from now on.
		v->runnable_ns = (preempt || prev_state == TASK_RUNNING) ? now : 0;
	}
	slot = bpf_map_lookup_elem(&vcpus, &next_pid);
	c->tid = next_pid;
	c->slot = slot ? *slot + 1 : 0;
	c->gen = gen;
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
