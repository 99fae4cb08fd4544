/* SPDX-License-Identifier: Apache-2.0 */
/*
 * hand.h - the tests' hand: console commands answered with "vesper-hand: " lines, the
 * same protocol as the Linux test guest's hand mode (tools/guest-kit/guest/init.sh),
 * acting on pseudo services instead of processes.
 */
#ifndef MINI_HAND_H
#define MINI_HAND_H

/* Runs one command line (modified in place). */
void hand_run(char *line);

#endif /* MINI_HAND_H */
