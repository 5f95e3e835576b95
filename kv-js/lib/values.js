'use strict';
// JSON values to and from google.protobuf.Value, with the checks that run
// before anything is sent: a value the server would refuse, or that would
// not read back as what the caller stored, is a TypeError here.

/** Deepest nesting of arrays and objects the server accepts ([[1]] is 2). */
const MAX_DEPTH = 32;

function describe(value) {
  if (typeof value === 'bigint') return `the BigInt ${value}n`;
  if (typeof value === 'symbol') return `the symbol ${String(value)}`;
  if (typeof value === 'function') return `a function${value.name ? ` (${value.name})` : ''}`;
  return String(value);
}

// In a `u` regex a well-formed pair is one code point, so this matches only
// a lone surrogate: text that has no UTF-8 form, which the server refuses.
const LONE_SURROGATE = /\p{Surrogate}/u;

function wellFormed(text) {
  return typeof text.isWellFormed === 'function' ? text.isWellFormed() : !LONE_SURROGATE.test(text);
}

function where(path) {
  return path.length ? `at ${path.join('')}` : 'as the value';
}

function refuse(what, path, why) {
  return new TypeError(`kv values are JSON: ${what} ${where(path)} ${why}`);
}

/**
 * Converts a JS value to a google.protobuf.Value object (proto-loader's
 * shape), following JSON.stringify: toJSON() is called (a Date becomes its
 * ISO string), boxed primitives are unboxed, undefined members of objects
 * are dropped and undefined items of arrays become null. What JSON.stringify
 * would silently lose or turn into null (NaN, Infinity, BigInt, functions,
 * symbols) and cycles are refused with a TypeError naming the path.
 *
 * Returns [message, approxBytes]; the size estimate sizes pipeline frames.
 */
function toValue(input) {
  const ancestors = [];
  const path = [];
  let bytes = 0;

  function convert(value, holderKey) {
    if (value !== null && (typeof value === 'object' || typeof value === 'bigint')) {
      if (typeof value.toJSON === 'function') value = value.toJSON(holderKey);
    }
    if (value !== null && typeof value === 'object') {
      if (value instanceof Number) value = Number(value);
      else if (value instanceof String) value = String(value);
      else if (value instanceof Boolean) value = value.valueOf();
    }
    switch (typeof value) {
      case 'string':
        if (!wellFormed(value)) {
          throw refuse('a string with a lone surrogate', path, 'cannot be stored: it is not valid Unicode, so it has no UTF-8 form');
        }
        bytes += value.length + 3;
        return { stringValue: value };
      case 'number':
        if (!Number.isFinite(value)) {
          throw refuse(describe(value), path, 'is not a JSON number (NaN and Infinity cannot be stored)');
        }
        bytes += 9;
        return { numberValue: value };
      case 'boolean':
        bytes += 2;
        return { boolValue: value };
      case 'bigint':
        throw refuse(describe(value), path, 'cannot be stored: convert it to a number or a string first');
      case 'function':
      case 'symbol':
        throw refuse(describe(value), path, 'cannot be stored');
      case 'undefined':
        throw refuse('undefined', path, 'cannot be stored (use null)');
      default:
        break;
    }
    if (value === null) {
      bytes += 2;
      return { nullValue: 0 };
    }
    if (ancestors.includes(value)) {
      throw refuse('a cyclic reference', path, 'cannot be stored: the value refers to itself');
    }
    if (ancestors.length >= MAX_DEPTH) {
      throw refuse('nesting', path, `is deeper than ${MAX_DEPTH} levels of arrays and objects, the server's limit`);
    }
    ancestors.push(value);
    let out;
    if (Array.isArray(value)) {
      const values = new Array(value.length);
      for (let i = 0; i < value.length; i++) {
        path.push(`[${i}]`);
        const item = value[i];
        values[i] = item === undefined ? (bytes += 2, { nullValue: 0 }) : convert(item, String(i));
        path.pop();
      }
      bytes += 4;
      out = { listValue: { values } };
    } else {
      const fields = {};
      for (const key of Object.keys(value)) {
        const member = value[key];
        if (member === undefined) continue;
        if (!wellFormed(key)) {
          throw refuse('a member name with a lone surrogate', path, 'cannot be stored: it is not valid Unicode');
        }
        path.push(/^[A-Za-z_$][\w$]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`);
        fields[key] = convert(member, key);
        path.pop();
        bytes += key.length + 6;
      }
      bytes += 4;
      out = { structValue: { fields } };
    }
    ancestors.pop();
    return out;
  }

  const message = convert(input, '');
  return [message, bytes];
}

function define(target, key, value) {
  if (key === '__proto__') {
    Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
  } else {
    target[key] = value;
  }
}

/** Converts a decoded google.protobuf.Value back to plain JSON. */
function fromValue(message) {
  if (message === null || message === undefined) return null;
  switch (message.kind) {
    case 'stringValue':
      return message.stringValue;
    case 'numberValue':
      return message.numberValue;
    case 'boolValue':
      return message.boolValue;
    case 'structValue': {
      const out = {};
      const fields = (message.structValue && message.structValue.fields) || {};
      for (const key of Object.keys(fields)) define(out, key, fromValue(fields[key]));
      return out;
    }
    case 'listValue': {
      const values = (message.listValue && message.listValue.values) || [];
      return values.map(fromValue);
    }
    default:
      return null;
  }
}

/** Checks a key: a string (its length and content are the server's to judge). */
function checkKey(key, what = 'key') {
  if (typeof key !== 'string') {
    throw new TypeError(`${what} must be a string, got ${key === null ? 'null' : typeof key}`);
  }
  if (!wellFormed(key)) {
    throw new TypeError(`${what} ${JSON.stringify(key)} has a lone surrogate: it is not valid Unicode, so it has no UTF-8 form`);
  }
  return key;
}

/** Checks an optional TTL in milliseconds: absent, or a whole number of ms. */
function checkTtl(ttlMs, what = 'ttlMs') {
  if (ttlMs === undefined || ttlMs === null) return undefined;
  if (typeof ttlMs !== 'number' || !Number.isSafeInteger(ttlMs) || ttlMs < 0) {
    throw new TypeError(`${what} must be a whole number of milliseconds (1 or more), got ${describe(ttlMs)}`);
  }
  return ttlMs;
}

/** Checks a version: a whole number from 1. */
function checkVersion(version, what = 'version') {
  if (typeof version !== 'number' || !Number.isSafeInteger(version) || version < 1) {
    throw new TypeError(`${what} must be a whole number from 1 (an entry's version), got ${describe(version)}`);
  }
  return version;
}

module.exports = { toValue, fromValue, checkKey, checkTtl, checkVersion, MAX_DEPTH };
