/* SPDX-License-Identifier: Apache-2.0 */
/* pxos_programs.h - primitive programs built into the tool (selftest, bench, workload). */
#ifndef PXOS_PROGRAMS_H
#define PXOS_PROGRAMS_H

extern const char px_selftest_source[];
extern const char px_bad_source[];      /* must be rejected at line PX_BAD_LINE */
#define PX_BAD_LINE 6
extern const char px_bench_source[];

#endif
