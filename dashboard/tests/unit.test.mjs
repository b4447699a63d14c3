// The dashboard's pure helpers, without a browser.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { int, compact, toDate, ago, absolute, clock } from '../static/format.js';

describe('format', () => {
  it('formats counts exactly and compactly', () => {
    assert.equal(int(10512), '10,512');
    assert.equal(int('7'), '7');
    assert.equal(int(undefined), '0');
    assert.deepEqual([0, 999, 1000, 1049, 1500, 9999, 10000, 10512, 999_499, 1_000_000, 2_340_000, 12_000_000].map(compact),
      ['0', '999', '1k', '1k', '1.5k', '10k', '10k', '11k', '999k', '1M', '2.3M', '12M']);
  });

  it('reads RFC 3339 strings and epoch seconds', () => {
    assert.equal(toDate('2026-11-22T10:15:00Z').getTime(), Date.UTC(2026, 10, 22, 10, 15));
    assert.equal(toDate(1763806500).getTime(), 1763806500_000);
    assert.equal(toDate('1763806500.25').getTime(), 1763806500_250);
    assert.equal(toDate(null), null);
    assert.equal(toDate('not a date'), null);
  });

  it('says how long ago, and when exactly', () => {
    const now = Date.UTC(2026, 10, 22, 12, 0, 0);
    const at = (s) => new Date(now - s * 1000).toISOString();
    assert.equal(ago(at(3), now), 'just now');
    assert.equal(ago(at(30), now), '30 s ago');
    assert.equal(ago(at(120), now), '2 min ago');
    assert.equal(ago(at(3 * 3600), now), '3 h ago');
    assert.equal(ago(at(3 * 86400), now), '3 d ago');
    assert.equal(ago(at(-60), now), 'just now', 'a clock slightly ahead is not "in the future"');
    assert.equal(ago(null, now), '—');
    assert.equal(absolute('2026-11-22T10:15:00.123Z'), '2026-11-22 10:15:00 UTC');
    assert.equal(clock(1763806500.5), '10:15:00.500');
  });
});

describe('markdown of comments', async () => {
  const { parse, inline } = await import('../static/markdown.js');
  it('keeps HTML as text and finds the few inline forms', () => {
    assert.deepEqual(inline('<img src=x onerror=alert(1)> **bold** and *it* `a<b>`'), [
      { t: 'text', v: '<img src=x onerror=alert(1)> ' },
      { t: 'strong', v: 'bold' },
      { t: 'text', v: ' and ' },
      { t: 'em', v: 'it' },
      { t: 'text', v: ' ' },
      { t: 'code', v: 'a<b>' },
    ]);
  });
  it('links only to http and https', () => {
    assert.deepEqual(inline('[docs](https://example.com/x)'), [{ t: 'link', v: 'docs', href: 'https://example.com/x' }]);
    assert.deepEqual(inline('[x](javascript:alert(1))'), [{ t: 'text', v: '[x](javascript:alert(1))' }]);
  });
  it('splits paragraphs, lines and fenced code', () => {
    const b = parse('one\ntwo\n\n```\n<b>raw</b>\n```\nthree');
    assert.deepEqual(b.map((x) => x.t), ['p', 'code', 'p']);
    assert.equal(b[0].lines.length, 2);
    assert.equal(b[1].v, '<b>raw</b>');
  });
});
