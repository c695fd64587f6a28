/** Deterministic filler prompts for the benches: `words` words from a fixed list, a different text per `salt`. */
const WORDS = 'amber birch cedar delta ember fjord glacier harbor island juniper kestrel lantern meadow nectar orchard prairie quartz river summit tundra umber valley willow xenon yarrow zephyr'.split(' ');

export function text(words: number, salt: number): string {
  // 32-bit integer arithmetic (Math.imul): in floating point the products lose their low bits and texts repeat.
  let state = Math.imul(salt, 2654435761) >>> 0;
  const out: string[] = [];
  for (let i = 0; i < words; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    out.push(WORDS[state % WORDS.length]!);
  }
  return out.join(' ');
}
