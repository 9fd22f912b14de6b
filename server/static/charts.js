// The console's charts, drawn as SVG by hand: no library.
//
// Every chart is a <figure> whose <svg> has role="img" and an aria-label
// that says what it shows in words, followed by the same figures as a
// table, so nothing is only in the picture. Shapes and positions carry the
// meaning as well as colours: failures are crosses or bars above the axis,
// deliveries circles or bars below it.

import { formatTime, h } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const STEPS = [MINUTE, 5 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 30 * DAY];

function s(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) {
      element.setAttribute(name, String(value));
    }
  }
  for (const child of children) {
    if (child === null || child === undefined) {
      continue;
    }
    element.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function scale(domainStart, domainEnd, rangeStart, rangeEnd) {
  const span = domainEnd - domainStart || 1;
  return (value) => rangeStart + ((value - domainStart) / span) * (rangeEnd - rangeStart);
}

/** Tick times for the domain, on a round step, at most `most` of them. */
function ticks(start, end, most) {
  const span = end - start;
  const step = STEPS.find((candidate) => span / candidate <= most) || STEPS[STEPS.length - 1];
  const first = Math.ceil(start / step) * step;
  const found = [];
  for (let at = first; at <= end; at += step) {
    found.push(at);
  }
  return { step, found };
}

function tickLabel(at, step) {
  const text = new Date(at).toISOString();
  if (step >= DAY) {
    return text.slice(5, 10);
  }
  return text.slice(11, 16);
}

function timeAxis(x, start, end, y, width) {
  const group = s("g", { class: "axis", "aria-hidden": "true" });
  group.appendChild(s("line", { x1: x(start), x2: x(end), y1: y, y2: y, class: "axis-line" }));
  const { step, found } = ticks(start, end, Math.max(2, Math.floor(width / 110)));
  for (const at of found) {
    group.appendChild(s("line", { x1: x(at), x2: x(at), y1: y, y2: y + 5, class: "axis-tick" }));
    group.appendChild(s("text", { x: x(at), y: y + 18, "text-anchor": "middle", class: "axis-label" }, tickLabel(at, step)));
  }
  return group;
}

function figure(className, svg, caption, alternative) {
  return h(
    "figure",
    { class: `chart ${className}` },
    svg,
    h("figcaption", {}, caption),
    h("details", { class: "chart-table" }, h("summary", {}, "The chart as a table"), alternative),
  );
}

function dataTable(caption, headers, rows) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, row.map((cell, i) => (i === 0 ? h("th", { scope: "row" }, cell) : h("td", {}, cell)))))),
    ),
  );
}

/**
 * The timeline of one lineage: its attempts (crosses failed, circles
 * delivered), the retry window of its decision as a band, and now.
 *
 * `lineage` is the lineage document of the API; `decision` its decision
 * (or null); `now` a Date; `width` the drawing width in pixels.
 */
export function lineageTimeline(lineage, decision, now, width = 720) {
  const attempts = lineage.attempts || [];
  const windowStart = decision && decision.not_before ? Date.parse(decision.not_before) : null;
  const windowEnd = decision && decision.not_after ? Date.parse(decision.not_after) : null;
  const moments = attempts.map((attempt) => Date.parse(attempt.started_at));
  const nowAt = now.getTime();
  const all = [...moments, nowAt];
  if (windowStart !== null) all.push(windowStart);
  if (windowEnd !== null) all.push(windowEnd);
  let start = Math.min(...all);
  let end = Math.max(...all);
  if (end - start < 2 * MINUTE) {
    start -= MINUTE;
    end += MINUTE;
  }
  const pad = (end - start) * 0.04;
  start -= pad;
  end += pad;

  const height = 150;
  const left = 16;
  const right = width - 16;
  const axisY = 112;
  const x = scale(start, end, left, right);

  const label = timelineLabel(lineage, decision, attempts);
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width: "100%",
    role: "img",
    "aria-label": label,
    class: "chart-svg",
    preserveAspectRatio: "xMinYMin meet",
  });
  svg.appendChild(s("title", {}, label));

  if (windowStart !== null && windowEnd !== null) {
    const x1 = x(windowStart);
    const x2 = Math.max(x(windowEnd), x1 + 2);
    svg.appendChild(s("rect", { x: x1, y: 34, width: x2 - x1, height: axisY - 34, class: "window-band" }));
    svg.appendChild(s("text", { x: x1 + 4, y: 48, class: "window-label" }, "retry window"));
  }

  const nowX = x(nowAt);
  svg.appendChild(s("line", { x1: nowX, x2: nowX, y1: 20, y2: axisY, class: "now-line" }));
  svg.appendChild(s("text", { x: nowX, y: 16, "text-anchor": "middle", class: "now-label" }, "now"));

  svg.appendChild(timeAxis(x, start, end, axisY, width));

  attempts.forEach((attempt, index) => {
    const cx = x(moments[index]);
    const cy = 84;
    const group = s("g", { class: `attempt attempt-${attempt.outcome}` });
    if (attempt.outcome === "delivered") {
      group.appendChild(s("circle", { cx, cy, r: 7 }));
    } else {
      group.appendChild(s("path", { d: `M${cx - 6},${cy - 6} L${cx + 6},${cy + 6} M${cx + 6},${cy - 6} L${cx - 6},${cy + 6}` }));
    }
    group.appendChild(s("text", { x: cx, y: cy - 13, "text-anchor": "middle" }, `#${attempt.attempt_number}`));
    svg.appendChild(group);
  });

  const rows = attempts.map((attempt) => [
    `Attempt ${attempt.attempt_number}`,
    formatTime(attempt.started_at),
    attempt.outcome,
    attempt.error_class || "—",
    attempt.http_status ?? "—",
  ]);
  if (decision) {
    rows.push(["Retry window opens", formatTime(decision.not_before), "", "", ""]);
    rows.push(["Retry window closes", formatTime(decision.not_after), "", "", ""]);
  }
  rows.push(["Now", formatTime(now.toISOString()), "", "", ""]);

  return figure(
    "timeline",
    svg,
    "Attempts of this lineage (× failed, ○ delivered), the retry window of its decision, and now.",
    dataTable("Attempts and retry window of this lineage", ["Event", "Time", "Outcome", "Failure class", "HTTP status"], rows),
  );
}

function timelineLabel(lineage, decision, attempts) {
  const failed = attempts.filter((a) => a.outcome === "failed").length;
  const delivered = attempts.length - failed;
  let text = `Timeline of lineage ${lineage.lineage_id}: ${attempts.length} attempts (${failed} failed, ${delivered} delivered)`;
  if (attempts.length) {
    text += ` from ${formatTime(attempts[0].started_at)} to ${formatTime(attempts[attempts.length - 1].started_at)}`;
  }
  if (decision && decision.not_before && decision.not_after) {
    text += `; retry window from ${formatTime(decision.not_before)} to ${formatTime(decision.not_after)}`;
  } else {
    text += "; no retry window";
  }
  return text + ".";
}

/**
 * Failures and recoveries over time, one small chart per connector:
 * failures as bars above the axis, recoveries (deliveries of a retry)
 * below it. `activity` is the attempt-activity document of the API.
 */
export function activityCharts(activity, width = 720) {
  const start = Date.parse(activity.since);
  const end = Date.parse(activity.until);
  const bucketMs = activity.bucket_minutes * MINUTE;
  const peak = Math.max(
    1,
    ...activity.connectors.flatMap((connector) =>
      connector.buckets.flatMap((bucket) => [bucket.failed, bucket.recovered]),
    ),
  );

  const charts = activity.connectors.map((connector) => connectorChart(connector, start, end, bucketMs, peak, width));
  const rows = [];
  for (const connector of activity.connectors) {
    for (const bucket of connector.buckets) {
      if (bucket.failed || bucket.delivered || bucket.recovered) {
        rows.push([connector.connector_id, formatTime(bucket.start), bucket.failed, bucket.delivered, bucket.recovered]);
      }
    }
  }
  const legend = h(
    "p",
    { class: "legend" },
    h("span", { class: "swatch swatch-failed", "aria-hidden": "true" }),
    " failed attempts (above the line) ",
    h("span", { class: "swatch swatch-recovered", "aria-hidden": "true" }),
    " recoveries: retries delivered (below the line)",
  );
  const alternative = rows.length
    ? dataTable(
        `Attempts per ${activity.bucket_minutes}-minute bucket, by connector (buckets without attempts left out)`,
        ["Connector", "Bucket start", "Failed", "Delivered", "Recovered"],
        rows,
      )
    : h("p", {}, "No attempt in this period.");
  return h(
    "div",
    { class: "activity" },
    legend,
    charts,
    h("details", { class: "chart-table" }, h("summary", {}, "The charts as a table"), alternative),
  );
}

function connectorChart(connector, start, end, bucketMs, peak, width) {
  const height = 150;
  const left = 16;
  const right = width - 16;
  const middle = 64;
  const barRoom = 50;
  const x = scale(start, end, left, right);
  const y = (count) => (count / peak) * barRoom;
  const failed = connector.buckets.reduce((sum, b) => sum + b.failed, 0);
  const recovered = connector.buckets.reduce((sum, b) => sum + b.recovered, 0);
  const busiest = connector.buckets.reduce((best, b) => (b.failed > (best ? best.failed : 0) ? b : best), null);
  let label =
    `${connector.connector_id}: ${failed} failed attempts and ${recovered} recoveries ` +
    `between ${formatTime(new Date(start).toISOString())} and ${formatTime(new Date(end).toISOString())}`;
  if (busiest) {
    label += `; most failures (${busiest.failed}) in the bucket from ${formatTime(busiest.start)}`;
  }
  label += ".";

  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width: "100%",
    role: "img",
    "aria-label": label,
    class: "chart-svg",
    preserveAspectRatio: "xMinYMin meet",
  });
  svg.appendChild(s("title", {}, label));
  for (const bucket of connector.buckets) {
    const from = Date.parse(bucket.start);
    const x1 = x(from);
    const barWidth = Math.max(1, x(from + bucketMs) - x1 - 1);
    if (bucket.failed) {
      svg.appendChild(s("rect", { x: x1, y: middle - y(bucket.failed), width: barWidth, height: y(bucket.failed), class: "bar-failed" }));
    }
    if (bucket.recovered) {
      svg.appendChild(s("rect", { x: x1, y: middle, width: barWidth, height: y(bucket.recovered), class: "bar-recovered" }));
    }
  }
  svg.appendChild(s("line", { x1: left, x2: right, y1: middle, y2: middle, class: "axis-line" }));
  svg.appendChild(s("text", { x: left, y: 12, class: "chart-peak" }, `${peak} ▲ failed`));
  svg.appendChild(timeAxis(x, start, end, middle + barRoom + 8, width));

  return h(
    "figure",
    { class: "chart connector-activity", "data-connector": connector.connector_id },
    h("figcaption", {}, h("strong", {}, connector.connector_id), ` — ${failed} failed, ${recovered} recovered`),
    svg,
  );
}
