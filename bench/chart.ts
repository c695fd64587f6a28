/** A dependency-free SVG bar chart of Kiln/llama-server ratios, with the 1.0 parity line. */
export function renderChart(rows: Array<{ metric: string; ratio: number }>): string {
  const barHeight = 26;
  const left = 230;
  const width = 760;
  const plot = width - left - 60;
  const max = Math.max(2, ...rows.map((row) => (Number.isFinite(row.ratio) ? row.ratio : 0)));
  const x = (value: number) => left + (value / max) * plot;
  const height = rows.length * barHeight + 60;
  const bars = rows
    .map((row, index) => {
      const y = 30 + index * barHeight;
      const ratio = Number.isFinite(row.ratio) ? row.ratio : 0;
      const lowerIsBetter = row.metric.startsWith('TTFT');
      const good = lowerIsBetter ? ratio <= 1 : ratio >= 1;
      return [
        `<text x="${left - 8}" y="${y + 17}" text-anchor="end" font-size="13">${escapeXml(row.metric)}</text>`,
        `<rect x="${left}" y="${y + 4}" width="${Math.max(1, x(ratio) - left).toFixed(1)}" height="${barHeight - 8}" fill="${good ? '#3a8f5c' : '#c0504d'}"/>`,
        `<text x="${(x(ratio) + 6).toFixed(1)}" y="${y + 17}" font-size="12">${ratio.toFixed(2)}</text>`,
      ].join('');
    })
    .join('\n');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${left}" y="18" font-size="14" font-weight="bold">Kiln / llama-server (throughput: higher is better; TTFT: lower is better)</text>
${bars}
<line x1="${x(1)}" y1="26" x2="${x(1)}" y2="${height - 20}" stroke="#333" stroke-dasharray="4 3"/>
<text x="${x(1)}" y="${height - 6}" font-size="12" text-anchor="middle">1.0</text>
</svg>
`;
}

function escapeXml(value: string): string {
  return value.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
}
