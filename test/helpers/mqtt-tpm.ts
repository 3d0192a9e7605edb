import type { MosquittoBroker } from '../../hardware-sim/mosquitto.js'
import { startMosquitto } from '../../hardware-sim/mosquitto.js'
import { type SwtpmInstance, startSwtpm } from '../../hardware-sim/swtpm.js'
import { cli } from './exec.js'
import { agentMqttToml, type Spy, startSpy } from './mqtt.js'

/** An swtpm, a TLS broker and a spy on it: what every TPM-over-MQTT test starts from. */
export interface MqttTpmRig extends AsyncDisposable {
  readonly sim: SwtpmInstance
  readonly broker: MosquittoBroker
  readonly spy: Spy
  /** SHA-256 of the simulator's RSA-2048 EK public key (the `tpm:ek_hash` selector value). */
  readonly ekHash: string
}

export async function startMqttTpmRig(): Promise<MqttTpmRig> {
  // Node 20 has no AsyncDisposableStack: undo by hand, last started first.
  const started: AsyncDisposable[] = []
  const dispose = async () => {
    for (const d of started.splice(0).reverse()) await d[Symbol.asyncDispose]()
  }
  try {
    const sim = await startSwtpm()
    started.push(sim)
    const broker = await startMosquitto({ tls: true })
    started.push(broker)
    const spy = await startSpy(broker)
    started.push(spy)
    const info = JSON.parse((await cli(['tpm', 'info', '--tcti', sim.tcti, '--json'])).stdout) as {
      endorsement_keys: { algorithm: string; public_key_sha256: string }[]
    }
    const ek = info.endorsement_keys.find((k) => k.algorithm === 'rsa-2048')
    if (!ek) throw new Error('swtpm has no RSA-2048 EK')
    return { sim, broker, spy, ekHash: ek.public_key_sha256, [Symbol.asyncDispose]: dispose }
  } catch (e) {
    await dispose()
    throw e
  }
}

/** The server's TPM node attestor for the rig's simulator. */
export function serverTpmToml(rig: MqttTpmRig): string {
  return `[plugins.NodeAttestor.tpm]\nek_ca_bundle = "${rig.sim.ekCaBundle}"\npcr_selection = "sha256:0,1,2,3,4,5,6,7"\n`
}

/** `[agent.mqtt]` plus the agent's TPM attestor, disk keys and unix workload attestor. */
export function agentMqttTpmToml(rig: MqttTpmRig): string {
  return (
    `${agentMqttToml(rig.broker)}\n[plugins.NodeAttestor.tpm]\ntcti = "${rig.sim.tcti}"\nak_algorithm = "ecc-p256"\n` +
    '[plugins.KeyManager.disk]\n[plugins.WorkloadAttestor.unix]\n'
  )
}
