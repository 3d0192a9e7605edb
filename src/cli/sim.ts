import { runningSwtpm, startSwtpm, stopSwtpmDaemon, toJson } from '../../hardware-sim/swtpm.js'
import { type Group, optionalPort, requireString } from './command.js'
import { cloudGroup } from './sim-cloud.js'
import { hsmGroup, mqttGroup } from './sim-hsm-mqtt.js'

const tpmSim: Group = {
  kind: 'group',
  name: 'tpm',
  summary: 'a software TPM (swtpm) with its own manufacturer CA and EK certificates',
  children: [
    {
      kind: 'command',
      name: 'start',
      summary: 'manufacture (first time) and start swtpm on loopback; prints one JSON line',
      details:
        'Output: {"tcti", "ek_ca_bundle", "pid", "state", "port", "ctrl_port"}. Starting again on the same\n' +
        '--state restarts the same TPM (same EKs). The control channel listens on port + 1.',
      options: {
        state: {
          type: 'string',
          description: 'state directory (TPM state, its CA)',
          valueName: 'DIR',
        },
        port: {
          type: 'string',
          description: 'TCP port for the TPM (port + 1 for control)',
          valueName: 'N',
        },
      },
      async run(values, io) {
        const stateDir = requireString(values, 'state')
        const existing = runningSwtpm(stateDir)
        if (existing) {
          io.out(`${JSON.stringify({ ...toJson(existing), already_running: true })}\n`)
          return 0
        }
        const port = optionalPort(values)
        const tpm = await startSwtpm({ stateDir, detached: true, ...(port ? { port } : {}) })
        io.out(`${JSON.stringify(toJson(tpm))}\n`)
        return 0
      },
    },
    {
      kind: 'command',
      name: 'stop',
      summary: 'stop the swtpm started for --state (the state is kept)',
      options: {
        state: { type: 'string', description: 'state directory given to start', valueName: 'DIR' },
      },
      async run(values, io) {
        const info = await stopSwtpmDaemon(requireString(values, 'state'))
        io.out(`${JSON.stringify({ stopped: true, pid: info.pid, state: info.stateDir })}\n`)
        return 0
      },
    },
  ],
}

export const simGroup: Group = {
  kind: 'group',
  name: 'sim',
  summary:
    'hardware-sim: simulated TPM, HSM, MQTT broker and cloud metadata services for tests, demos and fleet CI',
  children: [tpmSim, hsmGroup, mqttGroup, cloudGroup],
}
