export { type DockerAttestorOptions, dockerAttestor } from './docker.js'
export { type SystemdAttestorOptions, systemdAttestor } from './systemd.js'
export { type UnixAttestorOptions, unixAttestor } from './unix.js'
