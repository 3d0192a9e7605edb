// @peculiar/x509 resolves its ASN.1 providers through tsyringe, which needs the Reflect metadata
// polyfill loaded first. Import x509 from here, never directly, so the order is always right.
import 'reflect-metadata'

export * as x509 from '@peculiar/x509'
