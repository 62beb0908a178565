// Azure Managed Redis (Balanced B0): shared cache for rate-limit counters.
// Azure Cache for Redis (Microsoft.Cache/redis) is retiring and closed to new tenants,
// so this uses its successor. Clients connect with TLS on port 10000.
param name string
param location string
param tags object = {}

resource cluster 'Microsoft.Cache/redisEnterprise@2025-04-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Balanced_B0'
  }
  properties: {
    minimumTlsVersion: '1.2'
    highAvailability: 'Disabled'
  }
}

resource database 'Microsoft.Cache/redisEnterprise/databases@2025-04-01' = {
  parent: cluster
  name: 'default'
  properties: {
    port: 10000
    clientProtocol: 'Encrypted'
    clusteringPolicy: 'EnterpriseCluster'
    evictionPolicy: 'VolatileLRU'
    // Django's RedisCache authenticates with a password, not an Entra token.
    accessKeysAuthentication: 'Enabled'
  }
}

output name string = cluster.name
