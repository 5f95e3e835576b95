'use strict';
// @kv/client: the kv client for Node. See README.md.

const { connect, Kv } = require('./lib/client');
const { KvError, CODE_NAMES } = require('./lib/errors');
const { newRequestId } = require('./lib/connection');
const { Batch } = require('./lib/batch');
const { Watch } = require('./lib/watch');
const { Admin } = require('./lib/admin');

module.exports = { connect, createKv: connect, Kv, KvError, CODE_NAMES, newRequestId, Batch, Watch, Admin };
