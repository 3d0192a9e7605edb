/**
 * The MQTT keys agent (`[agent.mqtt]`) and server (`[server.mqtt]`) configs share: topic prefix,
 * broker CA, credentials (a password file, never a password in the config), an optional client
 * certificate. Files are only named here; they are read at start so a missing one is reported
 * with the others.
 */
import { readFileSync } from 'node:fs'
import type { ConfigReader, Table } from './config.js'

export interface MqttSettings {
  readonly topicPrefix: string
  readonly caFile: string | undefined
  readonly username: string | undefined
  readonly passwordFile: string | undefined
  readonly certFile: string | undefined
  readonly keyFile: string | undefined
}

export const MQTT_KEYS = [
  'topic_prefix',
  'ca_file',
  'username',
  'password_file',
  'cert_file',
  'key_file',
] as const

/** Segments of letters, digits, '.', '_', '-' joined by '/': no wildcards, no $-topics. */
const PREFIX = /^[A-Za-z0-9._-]{1,64}(\/[A-Za-z0-9._-]{1,64}){0,3}$/

export function mqttSettings(r: ConfigReader, t: Table | undefined, path: string): MqttSettings {
  const s: MqttSettings = {
    topicPrefix: r.string(t, 'topic_prefix', path, 'spiffe-edge')!,
    caFile: t?.ca_file === undefined ? undefined : r.path(t, 'ca_file', path),
    username: r.optionalString(t, 'username', path),
    passwordFile: t?.password_file === undefined ? undefined : r.path(t, 'password_file', path),
    certFile: t?.cert_file === undefined ? undefined : r.path(t, 'cert_file', path),
    keyFile: t?.key_file === undefined ? undefined : r.path(t, 'key_file', path),
  }
  if (!PREFIX.test(s.topicPrefix))
    r.problems.push(
      `${path}.topic_prefix: '${s.topicPrefix}' must be up to 4 segments of [A-Za-z0-9._-] joined by '/'`,
    )
  if ((s.certFile === undefined) !== (s.keyFile === undefined))
    r.problems.push(`${path}: cert_file and key_file go together`)
  if (s.passwordFile !== undefined && s.username === undefined)
    r.problems.push(`${path}: password_file needs username`)
  return s
}

/** True for the URL schemes the MQTT transport speaks. */
export function isMqttUrl(url: string): boolean {
  return /^mqtts?:\/\/[^/\s]+:\d{1,5}\/?$/.test(url)
}

/** The files an MqttSettings names, read (ConfigError-style problems collected by the caller). */
export function readMqttFiles(s: MqttSettings): {
  ca?: Buffer
  password?: string
  cert?: Buffer
  key?: Buffer
} {
  const read = (f: string | undefined) => (f === undefined ? undefined : readFileSync(f))
  const password = read(s.passwordFile)?.toString('utf8').split('\n')[0]?.replace(/\r$/, '')
  const ca = read(s.caFile)
  const cert = read(s.certFile)
  const key = read(s.keyFile)
  return {
    ...(ca ? { ca } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(cert ? { cert } : {}),
    ...(key ? { key } : {}),
  }
}
