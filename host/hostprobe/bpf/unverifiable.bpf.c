// SPDX-License-Identifier: GPL-2.0
// A program the verifier must refuse (a map value used without its NULL check): the
// test object for "a BPF object that fails verification carries the verifier's log".
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} vcpus SEC(".maps");

SEC("tracepoint/sched/sched_switch")
int sched_switch(void *ctx)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&vcpus, &key);

	*v += 1; // no NULL check: "invalid mem access 'map_value_or_null'"
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
