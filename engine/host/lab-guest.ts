// Reads what Ferry's lab guest reports on its serial port (format: assets/lab-guest/README.md): a boot
// line, heartbeats with a pass counter, the gaps it saw in its own clock, and loud MISMATCH lines when its
// memory self-check fails. This is how Ferry and its tests prove that a VM kept running with its memory
// intact, and how long the guest itself saw its clock stand still around a pause or a move.

export interface Heartbeat {
  pass: number;
  ms: number;
  errors: number;
  /**
   * The longest gap in the guest's own clock against host time (ms) that the guest finished measuring
   * since its previous heartbeat: the `clock` line printed right after this heartbeat. Absent when the
   * guest printed none (an image older than the clock line, or one that has not yet seen the RTC's first
   * change of second). A gap is reported one to two seconds after it ended.
   */
  gapMs?: number;
}

export interface LabGuestReport {
  boots: number;
  heartbeats: Heartbeat[];
  mismatches: string[];
  faults: string[];
  /**
   * STALE lines: the guest found that memory lost a write its CPU had made (its tick count, kept in
   * memory and in a CPU register, disagreed after a move). Each line carries the count so far.
   */
  stale: { pass: number; lost: number }[];
  /** The longest gap over all heartbeats (ms), or null when the guest reported none. */
  maxGapMs: number | null;
}

// Trailing fields are allowed so that a later guest may add some without breaking this reader.
const HB = /^FERRY-GUEST hb pass=(\d+) ms=(\d+) errors=(\d+)(?:\s.*)?$/;
const CLOCK = /^FERRY-GUEST clock pass=(\d+) gap=(\d+)(?:\s.*)?$/;
const STALE = /^FERRY-GUEST STALE pass=(\d+) lost=(\d+)(?:\s.*)?$/;

export function parseLabGuestSerial(text: string): LabGuestReport {
  const report: LabGuestReport = {
    boots: 0,
    heartbeats: [],
    mismatches: [],
    faults: [],
    stale: [],
    maxGapMs: null,
  };
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line.startsWith('FERRY-GUEST ')) continue;
    const hb = HB.exec(line);
    const clock = hb ? null : CLOCK.exec(line);
    if (hb) report.heartbeats.push({ pass: Number(hb[1]), ms: Number(hb[2]), errors: Number(hb[3]) });
    else if (clock) {
      // The guest prints it right after the heartbeat of the same pass.
      const last = report.heartbeats.at(-1);
      const gap = Number(clock[2]);
      if (last && last.pass === Number(clock[1])) last.gapMs = gap;
      report.maxGapMs = Math.max(report.maxGapMs ?? 0, gap);
    } else if (line.startsWith('FERRY-GUEST boot')) report.boots++;
    else if (line.startsWith('FERRY-GUEST MISMATCH')) report.mismatches.push(line);
    else if (line.startsWith('FERRY-GUEST FAULT')) report.faults.push(line);
    else {
      const st = STALE.exec(line);
      if (st) report.stale.push({ pass: Number(st[1]), lost: Number(st[2]) });
    }
  }
  return report;
}

/** The guest is healthy when it has beaten, never faulted and never found a corrupted page. */
export function labGuestHealthy(r: LabGuestReport): boolean {
  const last = r.heartbeats.at(-1);
  return !!last && last.errors === 0 && r.mismatches.length === 0 && r.faults.length === 0;
}

/**
 * The longest gap the guest reported in heartbeats after pass `pass` (ms), or null if none of them carries
 * one. Around a move: the last pass seen before it started; the gap is only complete once the guest has
 * printed a heartbeat more than two seconds (host time) after the move ended.
 */
export function maxGapAfter(r: LabGuestReport, pass: number): number | null {
  let max: number | null = null;
  for (const h of r.heartbeats) if (h.pass > pass && h.gapMs !== undefined) max = Math.max(max ?? 0, h.gapMs);
  return max;
}
