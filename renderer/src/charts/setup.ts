/// <reference lib="dom" />
// Chart.js, registered once with only what the progress charts use, plus a small plugin that draws
// the pre-copy pass boundaries and leaves the drawn point count on the canvas (tests read it there).
import {
  Chart,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
  type ChartType,
  type Plugin,
} from 'chart.js';

export interface PassMarkerOptions {
  marks: { x: number; pass: number }[];
  color: string;
}

declare module 'chart.js' {
  interface PluginOptionsByType<TType extends ChartType> {
    passMarkers?: PassMarkerOptions & { _type?: TType };
  }
}

export const passMarkers: Plugin<'line'> = {
  id: 'passMarkers',
  afterUpdate(chart) {
    // The count of what Chart.js really holds, not of what the component was given.
    const first = chart.data.datasets[0];
    chart.canvas.dataset['points'] = String(first ? first.data.length : 0);
  },
  afterDatasetsDraw(chart) {
    // Chart.js types resolved plugin options as deep-partial: every field may be missing.
    const opts = chart.options.plugins?.passMarkers;
    const marks = (opts?.marks ?? []).filter(
      (m): m is { x: number; pass: number } => typeof m?.x === 'number' && typeof m.pass === 'number',
    );
    const color = opts?.color ?? '#888';
    const xScale = chart.scales['x'];
    if (!xScale || marks.length === 0) return;
    const { ctx, chartArea } = chart;
    ctx.save();
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.setLineDash([4, 4]);
    ctx.lineWidth = 1;
    ctx.font = '10px system-ui, sans-serif';
    ctx.textAlign = 'left';
    ctx.textBaseline = 'top';
    let lastLabelEnd = -Infinity;
    for (const m of marks) {
      const x = xScale.getPixelForValue(m.x);
      if (x < chartArea.left || x > chartArea.right) continue;
      ctx.beginPath();
      ctx.moveTo(x, chartArea.top);
      ctx.lineTo(x, chartArea.bottom);
      ctx.stroke();
      // The label sits right of its line, or left of it near the right edge; never over another label.
      const label = `pass ${m.pass}`;
      const width = ctx.measureText(label).width;
      const left = x + 3 + width > chartArea.right ? x - 3 - width : x + 3;
      if (left > lastLabelEnd + 2) {
        ctx.fillText(label, left, chartArea.top + 2);
        lastLabelEnd = left + width;
      }
    }
    ctx.restore();
  },
};

let registered = false;
export function registerCharts(): void {
  if (registered) return;
  Chart.register(LineController, LineElement, PointElement, LinearScale, Tooltip, Legend);
  registered = true;
}
