/**
 * `sim hsm` and `sim mqtt`: a SoftHSM2 token and a Mosquitto broker for local runs and CI.
 * Each command prints one JSON line, so scripts can read the module path, PIN or broker URL.
 */
import { resolve } from 'node:path'
import { startMosquitto, stopMosquittoDaemon } from '../../hardware-sim/mosquitto.js'
import { initSoftHsm } from '../../hardware-sim/softhsm.js'
import { type Group, type Leaf, optionalPort, requireString } from './command.js'

const stateOption = {
  type: 'string',
  description: 'state directory (created if missing)',
  valueName: 'DIR',
} as const

const hsmInit: Leaf = {
  kind: 'command',
  name: 'init',
  summary: 'initialise a SoftHSM2 token in the state directory (idempotent)',
  details:
    'Prints the PKCS#11 module path, slot, PINs and the SOFTHSM2_CONF to export.\n' +
    'A second init on the same state directory returns the existing token.',
  options: {
    state: stateOption,
    label: { type: 'string', description: 'token label', default: 'spiffe-edge' },
  },
  async run(values, io) {
    const state = resolve(requireString(values, 'state'))
    const token = await initSoftHsm({ stateDir: state, label: requireString(values, 'label') })
    const out = {
      module: token.modulePath,
      slot: token.slot,
      token_label: token.tokenLabel,
      pin: token.pin,
      so_pin: token.soPin,
      softhsm2_conf: token.confPath,
      state: token.stateDir,
    }
    io.out(`${JSON.stringify(out)}\n`)
    return 0
  },
}

export const hsmGroup: Group = {
  kind: 'group',
  name: 'hsm',
  summary: 'a SoftHSM2 token (PKCS#11) in a state directory',
  children: [hsmInit],
}

const mqttStart: Leaf = {
  kind: 'command',
  name: 'start',
  summary: 'start a Mosquitto broker on 127.0.0.1 in the background',
  details:
    "With --tls, clients must trust the printed 'ca' file.\n" +
    'With --dynsec, the dynamic security plugin is loaded, anonymous clients are refused, and the\n' +
    'admin (user name + password file), a bootstrap client and a server client are printed.',
  options: {
    state: stateOption,
    tls: { type: 'boolean', description: 'serve MQTT over TLS with a generated CA' },
    port: { type: 'string', description: 'listen port (default: a free one)', valueName: 'N' },
    dynsec: {
      type: 'boolean',
      description: 'authorize clients with the dynamic security plugin (spiffe-edge roles)',
    },
  },
  async run(values, io) {
    const state = resolve(requireString(values, 'state'))
    const port = optionalPort(values)
    const broker = await startMosquitto({
      stateDir: state,
      tls: values.tls === true,
      dynsec: values.dynsec === true,
      detached: true,
      ...(port === undefined ? {} : { port }),
    })
    const out = {
      url: broker.url,
      pid: broker.pid,
      state: broker.stateDir,
      ca: broker.caFile ?? null,
      ...(broker.dynsec === undefined
        ? {}
        : {
            dynsec_state: broker.dynsec.stateFile,
            admin_username: broker.dynsec.adminUsername,
            admin_password_file: broker.dynsec.adminPasswordFile,
            // The shared bootstrap secret goes into every agent's config, as a join token would.
            bootstrap_username: broker.dynsec.bootstrap.username,
            bootstrap_password: broker.dynsec.bootstrap.password,
            bootstrap_password_file: broker.dynsec.bootstrapPasswordFile,
            server_username: broker.dynsec.server.username,
            server_password_file: broker.dynsec.serverPasswordFile,
          }),
    }
    io.out(`${JSON.stringify(out)}\n`)
    return 0
  },
}

const mqttStop: Leaf = {
  kind: 'command',
  name: 'stop',
  summary: 'stop the broker started for the state directory',
  options: { state: stateOption },
  async run(values, io) {
    const state = resolve(requireString(values, 'state'))
    await stopMosquittoDaemon(state)
    io.out(`${JSON.stringify({ stopped: true, state })}\n`)
    return 0
  },
}

export const mqttGroup: Group = {
  kind: 'group',
  name: 'mqtt',
  summary: 'a Mosquitto MQTT v5 broker (plain or TLS) on 127.0.0.1',
  children: [mqttStart, mqttStop],
}
