// Reads what Ferry's lab guest reports on its serial port (format: assets/lab-guest/README.md): a boot
// line, heartbeats with a pass counter, and loud MISMATCH lines when its memory self-check fails.
// This is how Ferry and its tests prove that a VM kept running with its memory intact.

export interface Heartbeat {
  pass: number;
  ms: number;
  errors: number;
}

export interface LabGuestReport {
  boots: number;
  heartbeats: Heartbeat[];
  mismatches: string[];
  faults: string[];
}

const HB = /^FERRY-GUEST hb pass=(\d+) ms=(\d+) errors=(\d+)\s*$/;

export function parseLabGuestSerial(text: string): LabGuestReport {
  const report: LabGuestReport = { boots: 0, heartbeats: [], mismatches: [], faults: [] };
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line.startsWith('FERRY-GUEST ')) continue;
    const hb = HB.exec(line);
    if (hb) report.heartbeats.push({ pass: Number(hb[1]), ms: Number(hb[2]), errors: Number(hb[3]) });
    else if (line.startsWith('FERRY-GUEST boot')) report.boots++;
    else if (line.startsWith('FERRY-GUEST MISMATCH')) report.mismatches.push(line);
    else if (line.startsWith('FERRY-GUEST FAULT')) report.faults.push(line);
  }
  return report;
}

/** The guest is healthy when it has beaten, never faulted and never found a corrupted page. */
export function labGuestHealthy(r: LabGuestReport): boolean {
  const last = r.heartbeats.at(-1);
  return !!last && last.errors === 0 && r.mismatches.length === 0 && r.faults.length === 0;
}
