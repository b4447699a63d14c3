// Comments are Markdown, shown without ever parsing HTML: `parse` turns the text
// into blocks and inline runs, `render` builds them with text nodes only, so
// `<img onerror=...>` stays visible text. Supported: paragraphs, line breaks,
// fenced code, `code`, **bold**, *italic* / _italic_, [links](https://...).
import { h } from './dom.js';

const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+?\*\*)|(\*[^*\s][^*\n]*?\*|_[^_\s][^_\n]*?_)|(\[[^\]\n]+\]\((https?:\/\/[^\s)]+)\))/;

/** Inline runs of one line: [{t: 'text'|'code'|'strong'|'em'|'link', v, href?}]. */
export function inline(line) {
  const out = [];
  let rest = line;
  while (rest) {
    const m = rest.match(INLINE);
    if (!m) { out.push({ t: 'text', v: rest }); break; }
    if (m.index) out.push({ t: 'text', v: rest.slice(0, m.index) });
    const [all, code, strong, em, link, url] = m;
    if (code) out.push({ t: 'code', v: code.slice(1, -1) });
    else if (strong) out.push({ t: 'strong', v: strong.slice(2, -2) });
    else if (em) out.push({ t: 'em', v: em.slice(1, -1) });
    else if (link) out.push({ t: 'link', v: link.slice(1, link.indexOf('](')), href: url });
    rest = rest.slice(m.index + all.length);
  }
  return out;
}

/** Blocks: [{t: 'p', lines: [[run, ...], ...]} | {t: 'code', v}]. */
export function parse(text) {
  const blocks = [];
  const lines = String(text ?? '').replace(/\r\n?/g, '\n').split('\n');
  let para = [];
  const flush = () => { if (para.length) blocks.push({ t: 'p', lines: para.map(inline) }); para = []; };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (/^\s*```/.test(line)) {
      flush();
      const code = [];
      for (i++; i < lines.length && !/^\s*```/.test(lines[i]); i++) code.push(lines[i]);
      blocks.push({ t: 'code', v: code.join('\n') });
    } else if (!line.trim()) {
      flush();
    } else {
      para.push(line);
    }
  }
  flush();
  return blocks;
}

function run(r) {
  if (r.t === 'code') return h('code', null, r.v);
  if (r.t === 'strong') return h('strong', null, r.v);
  if (r.t === 'em') return h('em', null, r.v);
  if (r.t === 'link') return h('a', { href: r.href, rel: 'noopener noreferrer nofollow', target: '_blank' }, r.v);
  return r.v;
}

/** The comment as DOM nodes (a <div class="md">). */
export function render(text) {
  return h('div', { class: 'md' }, parse(text).map((b) => (b.t === 'code'
    ? h('pre', { class: 'code' }, b.v)
    : h('p', null, b.lines.map((l, i) => [i ? h('br') : null, l.map(run)])))));
}
