// SPDX-License-Identifier: GPL-2.0
// Host-kernel probes on a VM's vCPU threads: KVM exits and entries, KVM_RUN calls,
// scheduling (on CPU, off CPU, runnable but waiting). Only threads the host put into
// `vcpus` are counted; every other task costs one failed hash lookup.
//
// The tracepoint records are declared with preserve_access_index: field offsets are
// relocated against the running kernel's BTF (/sys/kernel/btf/vmlinux) at load time
// (CO-RE), so one object serves every kernel with BTF.
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

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

struct trace_event_raw_kvm_entry {
	struct trace_entry ent;
	unsigned int vcpu_id;
} PAC;

struct trace_event_raw_kvm_userspace_exit {
	struct trace_entry ent;
	__u32 reason;
	int errno;
} PAC;

struct trace_event_raw_kvm_fpu {
	struct trace_entry ent;
	__u32 load;
} PAC;

struct trace_event_raw_sched_switch {
	struct trace_entry ent;
	char prev_comm[16];
	int prev_pid;
	int prev_prio;
	long prev_state;
	char next_comm[16];
	int next_pid;
	int next_prio;
} PAC;

struct trace_event_raw_sched_wakeup_template {
	struct trace_entry ent;
	char comm[16];
	int pid;
	int prio;
	int target_cpu;
} PAC;

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
	__s64 out_state;      // prev_state when it left its CPU (0: preempted)
	__u32 in_run;         // inside KVM_RUN
	__u32 on_cpu;
	__u32 last_reason;    // last kvm_exit reason, (isa << 28) | reason
	__u32 pad;
};

struct reason_key {
	__u32 tid;
	__u32 reason; // kvm_exit: (isa << 28) | (reason & 0x0fffffff); userspace exit: (3 << 28) | KVM_EXIT_*
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct vcpu_stats);
} vcpus SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct reason_key);
	__type(value, __u64);
} exit_reasons SEC(".maps");

static __always_inline struct vcpu_stats *current_vcpu(__u32 *tid)
{
	*tid = (__u32)bpf_get_current_pid_tgid();
	return bpf_map_lookup_elem(&vcpus, tid);
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
	struct vcpu_stats *v = current_vcpu(&tid);

	if (!v)
		return 0;
	__u32 reason = (ctx->isa << 28) | (ctx->exit_reason & 0x0fffffff);
	v->exits++;
	v->last_exit_ns = bpf_ktime_get_ns();
	v->last_reason = reason;
	count_reason(tid, reason);
	return 0;
}

SEC("tracepoint/kvm/kvm_entry")
int kvm_entry(struct trace_event_raw_kvm_entry *ctx)
{
	__u32 tid;
	struct vcpu_stats *v = current_vcpu(&tid);

	if (!v)
		return 0;
	v->entries++;
	v->last_entry_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("tracepoint/kvm/kvm_userspace_exit")
int kvm_userspace_exit(struct trace_event_raw_kvm_userspace_exit *ctx)
{
	__u32 tid;
	struct vcpu_stats *v = current_vcpu(&tid);

	if (!v)
		return 0;
	v->uexits++;
	count_reason(tid, (3u << 28) | (ctx->reason & 0x0fffffff));
	return 0;
}

// kvm_fpu fires with load=1 as KVM_RUN starts and load=0 as it returns, on every
// vendor (VMX, SVM, PVM): the one generic "inside KVM_RUN" signal.
SEC("tracepoint/kvm/kvm_fpu")
int kvm_fpu(struct trace_event_raw_kvm_fpu *ctx)
{
	__u32 tid;
	struct vcpu_stats *v = current_vcpu(&tid);

	if (!v)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (ctx->load) {
		v->runs++;
		v->in_run = 1;
		v->run_enter_ns = now;
	} else {
		v->in_run = 0;
		v->run_leave_ns = now;
	}
	return 0;
}

SEC("tracepoint/sched/sched_switch")
int sched_switch(struct trace_event_raw_sched_switch *ctx)
{
	__u32 prev = ctx->prev_pid, next = ctx->next_pid;
	struct vcpu_stats *v;
	__u64 now = 0;

	v = bpf_map_lookup_elem(&vcpus, &prev);
	if (v) {
		now = bpf_ktime_get_ns();
		if (v->on_cpu && v->switch_in_ns)
			v->oncpu_ns += now - v->switch_in_ns;
		v->on_cpu = 0;
		v->switch_out_ns = now;
		v->out_state = ctx->prev_state;
		// Preempted while runnable: it waits for a CPU from now on.
		v->runnable_ns = ctx->prev_state == 0 ? now : 0;
	}
	v = bpf_map_lookup_elem(&vcpus, &next);
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

SEC("tracepoint/sched/sched_wakeup")
int sched_wakeup(struct trace_event_raw_sched_wakeup_template *ctx)
{
	__u32 pid = ctx->pid;
	struct vcpu_stats *v = bpf_map_lookup_elem(&vcpus, &pid);

	if (v && !v->on_cpu && !v->runnable_ns)
		v->runnable_ns = bpf_ktime_get_ns();
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
