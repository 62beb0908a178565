// chatsite on Azure Container Apps: one Django ASGI container plus what it needs.
// `azd up` deploys it; docs/deploy.md explains every parameter and the plain `az` route.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; names the resource group and seeds resource names.')
param environmentName string

@minLength(1)
@description('Region for every resource this template creates.')
param location string

@description('Object id of the person running azd. When set, they get the same two AI roles as the app, for local runs with AZURE_AI_CREDENTIAL=dev.')
param principalId string = ''

// Role assignments name the kind of principal and Azure refuses a mismatch
// (UnmatchedPrincipalType): azd logged in with a client id, as in CI, is a
// ServicePrincipal, not a User.
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('What principalId is. azd passes ServicePrincipal when it is logged in as one, User otherwise.')
param principalType string = 'User'

@description('Set by azd (SERVICE_WEB_RESOURCE_EXISTS): keeps the deployed image when only the infrastructure is re-provisioned.')
param webExists bool = false

// --- Azure AI Foundry ------------------------------------------------------------

@description('Create a new AI Services account and project. False: use the existing account named by aiServicesName.')
param createAiServices bool = false

@description('Name of the AI Services account (existing, or the one to create). Empty with createAiServices: a generated name.')
param aiServicesName string = ''

@description('Resource group of an existing AI Services account. Empty: the app resource group.')
param aiServicesResourceGroupName string = ''

@description('Project to create under a new account (createAiServices only).')
param aiProjectName string = 'chatsite'

@description('Model deployed into a new account for the agent to use (createAiServices only).')
param aiModelName string = 'gpt-4o-mini'
param aiModelVersion string = '2024-07-18'
param aiModelCapacity int = 30

@description('Project endpoint, https://<resource>.services.ai.azure.com/api/projects/<project>. Empty with createAiServices: derived from the new project.')
param aiProjectEndpoint string = ''

@description('Classic agent id (asst_...). Agents are data-plane objects: create one in the Foundry portal, then set AZURE_AI_AGENT_ID and provision again.')
param aiAgentId string = ''

@description('New Foundry agent name (chatBackend foundry).')
param aiAgentName string = ''

@description('OpenAI-compatible base URL, e.g. https://<resource>.openai.azure.com/openai/v1 (chatBackend openai; the managed identity authenticates with Entra).')
param openAiBaseUrl string = ''

@description('Model or Azure OpenAI deployment name (chatBackend openai).')
param openAiModel string = ''

@allowed([
  'azure_agents'
  'foundry'
  'openai'
  'local'
])
@description('Chat backend. local is the offline demo, useful until the agent exists.')
param chatBackend string = 'azure_agents'

// --- Application -----------------------------------------------------------------

// A newGuid() default would pass checkov's hard-coded-secret check but change on every
// provision, logging everyone out. azd generates this once and keeps it in the
// environment's config; plain `az` deployments pass it explicitly.
@secure()
@metadata({
  azd: {
    type: 'generate'
    config: {
      length: 64
      noSpecial: true
    }
  }
})
@description('Django SECRET_KEY, stored as a Container Apps secret.')
param djangoSecretKey string

@description('Extra host names (comma list, e.g. a custom domain) to allow next to the app\'s own FQDN.')
param additionalAllowedHosts string = ''

@minValue(0)
@description('DJANGO_HSTS_SECONDS. The ingress already redirects http to https.')
param hstsSeconds int = 86400

@allowed([
  'DEBUG'
  'INFO'
  'WARNING'
  'ERROR'
])
param logLevel string = 'INFO'

// --- Sign-in ---------------------------------------------------------------------

@description('Sign users in with Microsoft Entra ID at the ingress (Container Apps authentication); the app makes them Django users (AUTH_EASY_AUTH). Needs entraClientId and entraClientSecret: docs/deploy.md, "Sign-in with Entra ID".')
param enableEntraAuth bool = false

@description('Application (client) id of the Entra app registration.')
param entraClientId string = ''

@secure()
@description('A client secret of that app registration, stored as a Container Apps secret.')
param entraClientSecret string = ''

@description('Tenant whose accounts sign in. Empty: the tenant deployed to.')
param entraTenantId string = ''

@description('Entra group object ids (comma list) whose members are staff in the admin.')
param entraStaffGroups string = ''

@description('Entra group object ids (comma list) whose members are superusers.')
param entraSuperuserGroups string = ''

@description('Chat only for signed-in users (CHAT_REQUIRE_LOGIN): the page sends others to sign in, the API answers 401. Default: on with Entra sign-in.')
param requireSignIn bool = enableEntraAuth

// --- Capacity --------------------------------------------------------------------

@description('vCPU per replica; must pair with containerMemory as Container Apps allows (0.5/1Gi, 1/2Gi, ...).')
param containerCpu string = '0.5'
param containerMemory string = '1Gi'

@minValue(1)
@description('uvicorn worker processes per replica (WEB_CONCURRENCY).')
param webConcurrency int = 1

@minValue(0)
@description('0 scales to zero when idle (cold start on the next request); 1 keeps a warm replica.')
param minReplicas int = 1

@minValue(1)
@maxValue(300)
param maxReplicas int = 10

// Every open SSE stream is a concurrent request for the whole reply, so the platform
// default of 10 would add a replica per 10 readers. See docs/deploy.md, "Capacity".
@minValue(1)
@description('HTTP scale rule: concurrent requests (open streams included) per replica before adding one.')
param concurrentRequests int = 200

@minValue(30)
@maxValue(600)
@description('Seconds between SIGTERM and SIGKILL. Must exceed the Dockerfile\'s --timeout-graceful-shutdown (90) plus stream cleanup.')
param terminationGracePeriodSeconds int = 120

// --- Data services -----------------------------------------------------------------

@description('Create Azure Database for PostgreSQL Flexible Server. False: pass databaseUrl for a server you already have.')
param enablePostgres bool = true

@secure()
@metadata({
  azd: {
    type: 'generate'
    config: {
      length: 32
      noSpecial: true
      minLower: 2
      minUpper: 2
      minNumeric: 2
    }
  }
})
@description('PostgreSQL administrator password; alphanumeric so it needs no escaping in DATABASE_URL.')
param postgresAdminPassword string

@secure()
@description('DATABASE_URL of an existing database, used when enablePostgres is false.')
param databaseUrl string = ''

@minValue(1)
@description('DB_POOL_MAX_SIZE per worker. maxReplicas x webConcurrency x this must stay below the server\'s max_connections.')
param dbPoolMaxSize int = 4

@description('Create Azure Managed Redis for rate-limit counters shared by all replicas. False: each replica counts alone.')
param enableRedis bool = false

// --- Alerts ------------------------------------------------------------------------

@description('E-mail address for alert notifications. Empty: alerts show in the portal only.')
param alertEmail string = ''

@minValue(1)
@description('5xx responses in 5 minutes that raise an alert.')
param alert5xxThreshold int = 10

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var aiResourceGroupName = empty(aiServicesResourceGroupName) ? resourceGroup.name : aiServicesResourceGroupName
var resolvedAiServicesName = !empty(aiServicesName) ? aiServicesName : 'ais-${resourceToken}'
// An account to grant the AI roles on: a new one, or the existing one named. Without
// either (the local and openai backends, or before the agent exists) there is none.
var hasAiServices = createAiServices || !empty(aiServicesName)
var webAppName = 'ca-web-${resourceToken}'

resource resourceGroup 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: resourceGroup
  params: {
    name: 'id-web-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: resourceGroup
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  scope: resourceGroup
  params: {
    name: 'cr${resourceToken}'
    location: location
    tags: tags
    pullPrincipalId: identity.outputs.principalId
  }
}

module containerAppsEnvironment 'modules/container-apps-environment.bicep' = {
  name: 'container-apps-environment'
  scope: resourceGroup
  params: {
    name: 'cae-${resourceToken}'
    location: location
    tags: tags
    logAnalyticsName: monitoring.outputs.logAnalyticsName
  }
}

module aiServices 'modules/ai-services.bicep' = if (createAiServices) {
  name: 'ai-services'
  scope: az.resourceGroup(aiResourceGroupName)
  params: {
    name: resolvedAiServicesName
    location: location
    tags: tags
    projectName: aiProjectName
    modelName: aiModelName
    modelVersion: aiModelVersion
    modelCapacity: aiModelCapacity
  }
  dependsOn: [
    resourceGroup
  ]
}

// Both roles at the AI Services account itself: the old deployment failed with
// "permission denied" until Cognitive Services User was granted at this scope.
module aiAccess 'modules/ai-access.bicep' = if (hasAiServices) {
  name: 'ai-access'
  scope: az.resourceGroup(aiResourceGroupName)
  params: {
    aiServicesName: resolvedAiServicesName
    appPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
  dependsOn: [
    resourceGroup
    aiServices
  ]
}

module postgres 'modules/postgres.bicep' = if (enablePostgres) {
  name: 'postgres'
  scope: resourceGroup
  params: {
    name: 'psql-${resourceToken}'
    location: location
    tags: tags
    administratorPassword: postgresAdminPassword
  }
}

module redis 'modules/redis.bicep' = if (enableRedis) {
  name: 'redis'
  scope: resourceGroup
  params: {
    name: 'redis-${resourceToken}'
    location: location
    tags: tags
  }
}

module web 'modules/web.bicep' = {
  name: 'web'
  scope: resourceGroup
  params: {
    name: webAppName
    migrateJobName: 'caj-migrate-${resourceToken}'
    location: location
    tags: tags
    exists: webExists
    containerAppsEnvironmentName: containerAppsEnvironment.outputs.name
    identityName: identity.outputs.name
    registryLoginServer: registry.outputs.loginServer
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    postgresServerName: enablePostgres ? postgres.outputs.name : ''
    postgresDatabaseName: enablePostgres ? postgres.outputs.databaseName : ''
    postgresAdminLogin: enablePostgres ? postgres.outputs.administratorLogin : ''
    postgresAdminPassword: postgresAdminPassword
    databaseUrl: databaseUrl
    redisName: enableRedis ? redis.outputs.name : ''
    djangoSecretKey: djangoSecretKey
    additionalAllowedHosts: additionalAllowedHosts
    hstsSeconds: hstsSeconds
    logLevel: logLevel
    entraAuth: enableEntraAuth
    entraClientId: entraClientId
    entraClientSecret: entraClientSecret
    entraTenantId: empty(entraTenantId) ? tenant().tenantId : entraTenantId
    entraStaffGroups: entraStaffGroups
    entraSuperuserGroups: entraSuperuserGroups
    requireSignIn: requireSignIn
    chatBackend: chatBackend
    aiProjectEndpoint: !empty(aiProjectEndpoint) ? aiProjectEndpoint : (createAiServices ? aiServices.outputs.projectEndpoint : '')
    aiAgentId: aiAgentId
    aiAgentName: aiAgentName
    openAiBaseUrl: openAiBaseUrl
    openAiModel: openAiModel
    containerCpu: containerCpu
    containerMemory: containerMemory
    // Replies are followed, stopped and taken over across processes through Redis;
    // without it there must be one process (docs/deploy.md, "Redis").
    webConcurrency: enableRedis ? webConcurrency : 1
    minReplicas: min(minReplicas, enableRedis ? maxReplicas : 1)
    maxReplicas: enableRedis ? maxReplicas : 1
    concurrentRequests: concurrentRequests
    terminationGracePeriodSeconds: terminationGracePeriodSeconds
    dbPoolMaxSize: dbPoolMaxSize
  }
  dependsOn: [
    registry
    aiAccess
  ]
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: resourceGroup
  params: {
    namePrefix: webAppName
    tags: tags
    containerAppId: web.outputs.id
    alertEmail: alertEmail
    fiveXxThreshold: alert5xxThreshold
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = resourceGroup.name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = registry.outputs.loginServer
output AZURE_CONTAINER_REGISTRY_NAME string = registry.outputs.name
output AZURE_CONTAINER_ENVIRONMENT_NAME string = containerAppsEnvironment.outputs.name
output AZURE_MIGRATE_JOB_NAME string = web.outputs.migrateJobName
// azd stores outputs in the environment and passes this one back as aiServicesName
// on the next provision: a name for an account that was never created would make
// that provision grant roles on it.
output AZURE_AI_SERVICES_NAME string = hasAiServices ? resolvedAiServicesName : ''
output AZURE_AI_SERVICES_RESOURCE_GROUP string = aiResourceGroupName
output AZURE_AI_PROJECT_ENDPOINT string = web.outputs.aiProjectEndpoint
output SERVICE_WEB_NAME string = web.outputs.name
output SERVICE_WEB_URI string = web.outputs.uri
output SERVICE_WEB_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output SERVICE_WEB_IDENTITY_CLIENT_ID string = identity.outputs.clientId
