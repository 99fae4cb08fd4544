/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The host commands the worker executes (vesper_commands.c), and the bookkeeping they
 * keep in struct vesper_front: pushed modules, the module list's grant, load jobs.
 * Worker only, except vf_reap_load_job (also remove, after the worker stopped).
 */
#ifndef VESPER_COMMANDS_H
#define VESPER_COMMANDS_H

struct vesper_front;
struct vesper_load_job;

/*
 * Execute fe->cmd and post its completion. Returns -ESHUTDOWN if the frontend is
 * stopping (no completion posted), else 0.
 */
int vf_run_command(struct vesper_front *fe);
/* Posts the completion of every load whose init returned, and reaps its job. */
void vf_pump_loads(struct vesper_front *fe);
/* Stops (after init returned) and frees a job. */
void vf_reap_load_job(struct vesper_front *fe, struct vesper_load_job *job);
/* Revokes the live OP_LIST grant, if any, and frees its data-area pages. */
void vf_revoke_list_grant(struct vesper_front *fe);

#endif /* VESPER_COMMANDS_H */
