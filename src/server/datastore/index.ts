export { LATEST_SCHEMA_VERSION, type Migration, migrations } from './migrations.js'
export {
  loadBetterSqlite3,
  openMemoryDatastore,
  openSqliteDatastore,
  type SqliteDatastoreOptions,
} from './sqlite.js'
export type * from './types.js'
