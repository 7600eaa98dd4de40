/**
 * Where a file fails to parse, without a byte of what it holds. V8's JSON errors quote the
 * input ("Unexpected token 'o', "oqh0GXmMO6"... is not valid JSON"), and a secret file passed
 * by mistake (a key file as --peers) would put part of the secret in stderr and the logs. So the
 * parser's message is never shown: these functions find the line and column themselves.
 */

export interface TextPosition {
  readonly line: number;
  readonly column: number;
}

/** 1-based line and column of a character offset. */
export function positionOf(text: string, offset: number): TextPosition {
  let line = 1;
  let lineStart = 0;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text.charCodeAt(i) === 0x0a) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: offset - lineStart + 1 };
}

/**
 * The offset at which `text` stops being JSON (RFC 8259), or undefined if it is JSON. A small
 * recursive scanner, only run after JSON.parse has failed.
 */
export function jsonErrorOffset(text: string): number | undefined {
  let i = 0;
  class Stop {
    constructor(readonly at: number) {}
  }
  const stop = (): never => {
    throw new Stop(i);
  };
  const ws = (): void => {
    while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++;
  };
  const literal = (word: string): void => {
    for (const char of word) {
      if (text[i] !== char) stop();
      i++;
    }
  };
  const string = (): void => {
    i++; // the opening quote
    for (;;) {
      if (i >= text.length) stop();
      const code = text.charCodeAt(i);
      if (code === 0x22) {
        i++;
        return;
      }
      if (code < 0x20) stop();
      if (code === 0x5c) {
        i++;
        const escape = text[i];
        if (escape === 'u') {
          i++;
          for (let k = 0; k < 4; k++, i++) if (!/[0-9a-fA-F]/.test(text[i] ?? '')) stop();
          continue;
        }
        if (escape === undefined || !'"\\/bfnrt'.includes(escape)) stop();
      }
      i++;
    }
  };
  const digits = (): void => {
    if (!/[0-9]/.test(text[i] ?? '')) stop();
    while (/[0-9]/.test(text[i] ?? '')) i++;
  };
  const number = (): void => {
    if (text[i] === '-') i++;
    if (text[i] === '0') i++;
    else digits();
    if (text[i] === '.') {
      i++;
      digits();
    }
    if (text[i] === 'e' || text[i] === 'E') {
      i++;
      if (text[i] === '+' || text[i] === '-') i++;
      digits();
    }
  };
  const value = (depth: number): void => {
    if (depth > 512) stop();
    ws();
    const char = text[i];
    if (char === '{') {
      i++;
      ws();
      if (text[i] === '}') {
        i++;
        return;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') stop();
        string();
        ws();
        if (text[i] !== ':') stop();
        i++;
        value(depth + 1);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return;
        }
        stop();
      }
    } else if (char === '[') {
      i++;
      ws();
      if (text[i] === ']') {
        i++;
        return;
      }
      for (;;) {
        value(depth + 1);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return;
        }
        stop();
      }
    } else if (char === '"') string();
    else if (char === 't') literal('true');
    else if (char === 'f') literal('false');
    else if (char === 'n') literal('null');
    else if (char === '-' || /[0-9]/.test(char ?? '')) number();
    else stop();
  };
  try {
    value(0);
    ws();
    if (i < text.length) stop();
    return undefined;
  } catch (err) {
    if (err instanceof Stop) return err.at;
    throw err;
  }
}

/** What a secret file passed by mistake looks like: a `nodelink keygen` key or a PEM block. */
export function secretKind(text: string): string | undefined {
  if (/^\s*[A-Za-z0-9+/]{43}=\s*$/.test(text)) return 'a key';
  if (/-----BEGIN [A-Z0-9 ]+-----/.test(text)) return 'a PEM key or certificate';
  return undefined;
}

/**
 * Where `text` stops being JSON, with no part of the text: "line L, column C", "it is empty",
 * or, for a secret file passed by mistake (the likely cause), "it holds a key".
 */
export function whereJsonFails(text: string): string {
  if (text.trim() === '') return 'it is empty';
  const secret = secretKind(text);
  if (secret) return `it holds ${secret}`;
  const { line, column } = positionOf(text, jsonErrorOffset(text) ?? text.length);
  return `line ${line}, column ${column}`;
}
